"""Scores, ERK/uniform distributions, schedules and summary against their formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrm import prune


def _params():
    return {
        "conv": {"kernel": jnp.zeros((3, 3, 16, 32)), "bias": jnp.zeros(32)},
        "dense": {"kernel": jnp.zeros((512, 256)), "bias": jnp.zeros(256)},
        "head": {"kernel": jnp.zeros((256, 10))},
        "small": {"kernel": jnp.zeros((4, 3))},
    }


def _erk_reference(shapes, s):
    """Solve sum_l min(1, eps * raw_l) * n_l = (1 - s) * N for eps by bisection."""
    n = np.array([np.prod(sh) for sh in shapes], np.float64)
    raw = np.array([np.sum(sh) / np.prod(sh) for sh in shapes], np.float64)
    target = (1 - s) * n.sum()
    lo, hi = 0.0, 1.0 / raw.min() * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if (np.minimum(1.0, mid * raw) * n).sum() < target:
            lo = mid
        else:
            hi = mid
    return 1.0 - np.minimum(1.0, lo * raw)


@pytest.mark.parametrize("s", [0.5, 0.8, 0.9, 0.98])
def test_erk_matches_its_formula(s):
    params = _params()
    out = prune.erk(params, s)
    assert out["conv"]["bias"] is None and out["dense"]["bias"] is None
    names = ["conv", "dense", "head", "small"]
    shapes = [params[k]["kernel"].shape for k in names]
    got = np.array([out[k]["kernel"] for k in names])
    np.testing.assert_allclose(got, _erk_reference(shapes, s), atol=1e-9)
    n = np.array([np.prod(sh) for sh in shapes])
    np.testing.assert_allclose(((1 - got) * n).sum(), (1 - s) * n.sum(), rtol=1e-12)
    # non-dense leaves have density proportional to (sum of dims) / (product of dims)
    raw = np.array([np.sum(sh) / np.prod(sh) for sh in shapes])
    sparse = got > 0
    ratios = (1 - got[sparse]) / raw[sparse]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)


def test_erk_makes_small_layer_dense_and_masks_follow():
    params = _params()
    out = prune.erk(params, 0.9)
    assert out["small"]["kernel"] == 0.0  # its ERK density would exceed 1
    scores = prune.magnitude(jax.tree.map(lambda x: x + 1.0, params))
    m = prune.masks(scores, out)
    for k in ("conv", "dense", "head", "small"):
        n = m[k]["kernel"].size
        assert int(np.asarray(m[k]["kernel"]).sum()) == round((1 - out[k]["kernel"]) * n)


def test_uniform_assigns_every_selected_leaf():
    out = prune.uniform(_params(), 0.7)
    leaves = jax.tree_util.tree_leaves(out)
    assert leaves == [0.7] * 4
    assert out["conv"]["bias"] is None


def _zhu_gupta(t, final, begin, end, initial, power, every):
    if t < begin:
        return 0.0
    if t >= end:
        return final
    tg = begin + ((t - begin) // every) * every
    return final + (initial - final) * (1 - (tg - begin) / (end - begin)) ** power


def test_polynomial_matches_zhu_gupta():
    cfg = dict(final=0.9, begin=100, end=1100, initial=0.1, power=3, every=50)
    sched = prune.polynomial(0.9, 100, 1100, initial=0.1, power=3, every=50)
    steps = np.arange(0, 1300, 7)
    want = [_zhu_gupta(int(t), **cfg) for t in steps]
    got = jax.jit(jax.vmap(sched))(jnp.asarray(steps))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
    for t in (0, 99, 100, 149, 150, 600, 1100, 5000):  # plain Python steps
        np.testing.assert_allclose(float(sched(t)), _zhu_gupta(t, **cfg), rtol=1e-6, atol=1e-7)


def test_one_shot_iterative_constant():
    one = prune.one_shot(0.8, at=10)
    assert [float(one(t)) for t in (0, 9, 10, 500)] == pytest.approx([0, 0, 0.8, 0.8])
    it = prune.iterative([5, 20, 40], [0.5, 0.75, 0.9])
    got = [float(it(t)) for t in (0, 4, 5, 19, 20, 39, 40, 10_000)]
    assert got == pytest.approx([0, 0, 0.5, 0.5, 0.75, 0.75, 0.9, 0.9])
    assert float(jax.jit(it)(jnp.int32(25))) == pytest.approx(0.75)
    assert float(prune.constant(0.3)(123)) == pytest.approx(0.3)


def test_scores():
    rng = np.random.default_rng(0)
    w = {"k": rng.standard_normal((5, 4)).astype(np.float32), "step": np.int32(3)}
    g = {"k": rng.standard_normal((5, 4)).astype(np.float32), "step": np.int32(0)}
    np.testing.assert_array_equal(np.asarray(prune.magnitude(w)["k"]), np.abs(w["k"]))
    np.testing.assert_allclose(np.asarray(prune.saliency(w, g)["k"]), np.abs(w["k"] * g["k"]))
    assert prune.magnitude(w)["step"] == 3  # non-floating leaves pass through
    r1 = prune.random(jax.random.key(1), {"a": w["k"], "b": w["k"]})
    r2 = prune.random(jax.random.key(1), {"a": w["k"], "b": w["k"]})
    np.testing.assert_array_equal(np.asarray(r1["a"]), np.asarray(r2["a"]))
    assert not np.array_equal(np.asarray(r1["a"]), np.asarray(r1["b"]))
    assert 0 <= float(r1["a"].min()) and float(r1["a"].max()) < 1


def test_summary_on_masks_and_on_params():
    rng = np.random.default_rng(1)
    params = {"k": rng.standard_normal((10, 10)).astype(np.float32), "b": np.ones(10, np.float32)}
    m = prune.masks(prune.magnitude(params), 0.7)
    sm = prune.summary(m)
    assert [r.path for r in sm.rows] == ["k"]  # None leaves are skipped
    assert sm.nonzero == 30 and sm.size == 100 and sm.density == pytest.approx(0.3)
    sp = prune.summary(prune.apply(params, m))
    assert {r.path: r.nonzero for r in sp.rows} == {"b": 10, "k": 30}
    assert sp.density == pytest.approx(40 / 110)
    text = str(sp)
    assert "total" in text and "0.3000" in text and "(10, 10)" in text


def test_erk_reads_attention_kernels_as_the_matrices_they_are():
    # Linen attention under nn.scan: q/k/v (L, emb, heads, hd), o (L, heads, hd, emb),
    # an MLP (L, emb, 4 emb). ERK must give each layer the density of its
    # (fan_in, fan_out) matrix, the same as the 2-D Dense storing that layer.
    from flax import linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            q, k, v = (nn.DenseGeneral((4, 8), name=n)(x) for n in "qkv")
            o = nn.DenseGeneral(32, axis=(-2, -1), name="o")(q * k * v)
            return x + o + nn.Dense(32, name="down")(nn.Dense(128, name="up")(x)), None

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            scan = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                           length=3)
            return scan(name="blocks")(x, None)[0]

    params = Model().init(jax.random.key(0), jnp.zeros((1, 32)))["params"]
    got = prune.erk(params, 0.9, stacked=[("^blocks/", 0)])["blocks"]
    # the same layers as 2-D matrices (stacked on axis 0)
    mats = {"q": (32, 32), "k": (32, 32), "v": (32, 32), "o": (32, 32),
            "up": (32, 128), "down": (128, 32)}
    flat = {n: {"kernel": jnp.zeros((3, *sh))} for n, sh in mats.items()}
    want = prune.erk(flat, 0.9, stacked=0)
    ref = _erk_reference([sh for sh in mats.values() for _ in range(3)], 0.9)
    for i, n in enumerate(mats):
        assert got[n]["kernel"] == pytest.approx(want[n]["kernel"], abs=1e-12), n
        assert got[n]["kernel"] == pytest.approx(ref[3 * i], abs=1e-9), n
    # attention's 32x32 matrices are denser than the 32x128 MLP ones, as ERK says
    assert got["q"]["kernel"] < got["up"]["kernel"]
    # the names q/k/v/o alone say the leading axis of their kernels is stacked
    from jaxrm import tree as jtree

    lays = dict(zip([p for p, _ in jtree.leaves_with_paths(params)], jtree.layouts(params)))
    assert lays["blocks/q/kernel"] == jtree.Layout((3, 32, 4, 8), (0,), (2, 3), (1,), "dense")
    assert lays["blocks/o/kernel"] == jtree.Layout((3, 4, 8, 32), (0,), (3,), (1, 2), "dense")
