"""Grouped scores and keep selection against numpy brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from structural_models import MLP, FusedAttention, ResNet, Scanned
from test_prune_shrink import random_variables

from jaxrm import prune


def setup(model, x):
    v = random_variables(model, x)
    return v, prune.groups(model.apply, v, x)


def test_l1_and_l2_sum_member_norms_of_kernels_only():
    v, gs = setup(MLP((6, 4)), jnp.ones((2, 5)))
    p = {k: np.asarray(d["kernel"]) for k, d in v["params"].items()}
    l1 = prune.group_scores(v, gs, method="l1")
    l2 = prune.group_scores(v, gs, method="l2")
    for i, _g in enumerate(gs):
        col, row = p[f"Dense_{i}"], p[f"Dense_{i + 1}"]
        np.testing.assert_allclose(l1[i], np.abs(col).sum(0) + np.abs(row).sum(1), rtol=1e-5)
        np.testing.assert_allclose(
            l2[i], np.linalg.norm(col, axis=0) + np.linalg.norm(row, axis=1), rtol=1e-5)
    # Counting biases too, by regular expression.
    l1b = prune.group_scores(v, gs, method="l1", where="kernel|bias")
    np.testing.assert_allclose(l1b[0] - l1[0], np.abs(v["params"]["Dense_0"]["bias"]), rtol=1e-5)


def test_bn_scores_are_scale_magnitudes_and_taylor_uses_grads():
    x = jnp.ones((2, 6, 6, 3))
    v, gs = setup(ResNet(8, 6), x)
    bn = prune.group_scores(v, gs, method="bn")
    s = {i: np.abs(v["params"][f"BatchNorm_{i}"]["scale"]) for i in range(3)}
    np.testing.assert_allclose(bn[0], s[0] + s[2], rtol=1e-6)
    np.testing.assert_allclose(bn[1], s[1], rtol=1e-6)
    grads = jax.tree.map(lambda a: jnp.full_like(a, 0.5), v)
    taylor = prune.group_scores(v, gs, method="taylor", grads=grads)
    k = {i: np.asarray(v["params"][f"Conv_{i}"]["kernel"]) for i in range(3)}
    want = 0.5 * (k[1].sum((0, 1, 2)) + k[2].sum((0, 1, 3)))
    np.testing.assert_allclose(taylor[1], want**2, rtol=1e-4)
    with pytest.raises(ValueError, match="needs grads"):
        prune.group_scores(v, gs, method="taylor")
    with pytest.raises(ValueError, match="method"):
        prune.group_scores(v, gs, method="l3")
    with pytest.raises(ValueError, match="no normalisation scale"):
        w, hs = setup(MLP((4,)), jnp.ones((2, 5)))
        prune.group_scores(w, hs, method="bn")


def test_head_score_sums_over_the_heads_entries_and_layers_score_apart():
    v, gs = setup(FusedAttention(2, 3), jnp.ones((2, 5, 8)))
    l1 = prune.group_scores(v, gs, method="l1")
    qkv = np.abs(np.asarray(v["params"]["qkv"]["kernel"])).reshape(8, 3, 2, 3)
    out = np.abs(np.asarray(v["params"]["out"]["kernel"])).reshape(2, 3, 8)
    np.testing.assert_allclose(l1[0], qkv.sum((0, 1, 3)) + out.sum((1, 2)), rtol=1e-5)
    v, gs = setup(Scanned(4, 2), jnp.ones((2, 8)))
    l2 = prune.group_scores(v, gs)
    k0 = np.asarray(v["params"]["blocks"]["Dense_0"]["kernel"])
    k1 = np.asarray(v["params"]["blocks"]["Dense_1"]["kernel"])
    for layer in range(2):
        np.testing.assert_allclose(
            l2[layer], np.linalg.norm(k0[layer], axis=0) + np.linalg.norm(k1[layer], axis=1),
            rtol=1e-5)


def test_keep_uniform_global_and_min_keep():
    rng = np.random.default_rng(0)
    scores = [rng.random(10).astype(np.float32), rng.random(6).astype(np.float32) + 1]
    uni = prune.group_keep(scores, 0.5)
    for s, k in zip(scores, uni):
        assert int(np.sum(k)) == s.size // 2
        np.testing.assert_array_equal(k, s >= np.sort(s)[s.size // 2])
    glob = prune.group_keep(scores, 0.5, scope="global")
    flat = np.concatenate(scores)
    want = flat >= np.sort(flat)[8]
    np.testing.assert_array_equal(np.concatenate(glob), want)
    # The second group holds all high scores: at 0.75 the first keeps only min_keep.
    glob = prune.group_keep(scores, 0.75, scope="global", min_keep=2)
    assert int(np.sum(glob[0])) == 2 and glob[0][np.argmax(scores[0])]
    few = prune.group_keep([np.ones(3, np.float32)], 0.9)
    assert int(np.sum(few[0])) == 1
    per = prune.group_keep(scores, [0.2, 0.5])
    assert [int(np.sum(k)) for k in per] == [8, 3]
    with pytest.raises(ValueError, match="scope"):
        prune.group_keep(scores, 0.5, scope="layer")
    with pytest.raises(ValueError, match="sparsity"):
        prune.group_keep(scores, 1.0)
    with pytest.raises(ValueError, match="2 groups"):
        prune.group_keep(scores, [0.5])
