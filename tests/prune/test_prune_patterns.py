"""Structured patterns: N:M groups, whole channels, blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from prune_reference import top_k_reference

from jaxrm import prune


@pytest.mark.parametrize("n,m,axis", [(2, 4, -2), (1, 4, -1), (3, 8, 0), (4, 4, -2)])
def test_nm_keeps_n_top_scores_in_every_group(n, m, axis):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 9, size=(16, 24)).astype(np.float32)  # many ties
    mask = np.asarray(prune.masks({"w": x}, 0.5, pattern=prune.nm(n, m, axis))["w"])
    xm = np.moveaxis(x, axis, -1)
    mm = np.moveaxis(mask, axis, -1)
    groups_x = xm.reshape(*xm.shape[:-1], -1, m).reshape(-1, m)
    groups_m = mm.reshape(*mm.shape[:-1], -1, m).reshape(-1, m)
    for gx, gm in zip(groups_x, groups_m):
        assert gm.sum() == n
        np.testing.assert_array_equal(gm, top_k_reference([gx], n)[0])


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_nm_sparsity_zero_leaves_leaf_dense(scope):
    x = {"w": np.arange(32, dtype=np.float32).reshape(8, 4)}
    assert bool(np.asarray(prune.masks(x, 0.0, pattern=prune.nm(2, 4), scope=scope)["w"]).all())
    got = np.asarray(prune.masks(x, 0.9, pattern=prune.nm(2, 4), scope=scope)["w"])
    assert got.sum() == 16


@pytest.mark.parametrize("axis", [-1, 0])
def test_channels_prunes_whole_channels_by_l2_norm(axis):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 8, 12)).astype(np.float32)
    mask = np.asarray(prune.masks({"w": x}, 0.5, pattern=prune.channels(axis))["w"])
    moved = np.moveaxis(mask, axis, 0).reshape(x.shape[axis], -1)
    # every channel is entirely kept or entirely pruned
    assert np.all(moved.all(axis=1) | ~moved.any(axis=1))
    kept = moved.all(axis=1)
    c = x.shape[axis]
    assert kept.sum() == round(0.5 * c)
    norms = np.sqrt((np.moveaxis(x, axis, 0).reshape(c, -1).astype(np.float64) ** 2).sum(1))
    np.testing.assert_array_equal(kept, top_k_reference([norms], round(0.5 * c))[0])


def test_channels_global_ranks_channels_across_leaves():
    rng = np.random.default_rng(2)
    params = {
        "a": rng.standard_normal((4, 6)).astype(np.float32) * 3,
        "b": rng.standard_normal((4, 10)).astype(np.float32),
    }
    m = prune.masks(params, 0.75, scope="global", pattern=prune.channels(-1))
    kept = [np.asarray(m[k]).all(axis=0) for k in ("a", "b")]
    norms = [np.sqrt((params[k].astype(np.float64) ** 2).sum(0)) for k in ("a", "b")]
    ref = top_k_reference(norms, round(0.25 * 16))
    for got, want in zip(kept, ref):
        np.testing.assert_array_equal(got, want)


def test_blocks_prunes_whole_blocks():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 12)).astype(np.float32)
    mask = np.asarray(prune.masks({"w": x}, 0.6, pattern=prune.blocks((4, 3)))["w"])
    blocks = mask.reshape(2, 2, 4, 4, 3)  # (lead, gi, bi, gj, bj)
    full = blocks.all(axis=(2, 4))
    empty = ~blocks.any(axis=(2, 4))
    assert np.all(full | empty)
    nb = 2 * 2 * 4
    assert full.sum() == round(0.4 * nb)
    norms = (x.astype(np.float64) ** 2).reshape(2, 2, 4, 4, 3).sum(axis=(2, 4))
    np.testing.assert_array_equal(full, top_k_reference([norms], round(0.4 * nb))[0])


def test_patterns_work_on_the_device_path():
    from jaxrm.prune import _leaves, _masks

    rng = np.random.default_rng(4)
    x = {"w": jnp.asarray(rng.standard_normal((8, 16)), jnp.float32)}
    for pat in (prune.channels(-1), prune.blocks((2, 4)), prune.nm(2, 4)):
        plan = _leaves.plan(x, None, pattern=pat)
        host = _masks.compute(plan, [0.5], "layer", host=True)
        dev = _masks.compute(plan, [0.5], "layer", host=False)
        np.testing.assert_array_equal(np.asarray(host[0]), np.asarray(dev[0]))


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8), (0, 2), (4, 4), (5, 16)])
@pytest.mark.parametrize("stacked", [None, 0])
def test_eager_numpy_nm_equals_jit(n, m, stacked):
    # Eager N:M masks on host leaves are ranked in numpy, under jit in XLA: the same
    # masks, ties (rounded scores) and NaN included.
    rng = np.random.default_rng(n * 31 + m)
    x = np.abs(np.round(rng.standard_normal((4, 32, 48)).astype(np.float32) * 2) / 2)
    x[0, :5] = np.nan
    scores = {"layers": {"kernel": x}, "conv": {"kernel": x.reshape(2, 2, 32, 48)}}
    kw = dict(pattern=prune.nm(n, m), stacked={"layers": {"kernel": stacked},
                                               "conv": {"kernel": None}})
    eager = prune.masks(scores, 0.5, **kw)
    jitted = jax.jit(lambda s: prune.masks(s, 0.5, **kw))(scores)
    for path in (("layers", "kernel"), ("conv", "kernel")):
        a, b = eager[path[0]][path[1]], jitted[path[0]][path[1]]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
