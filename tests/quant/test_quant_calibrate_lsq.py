"""Static activation ranges against numpy; LSQ gradients against the paper's formula."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrm import quant
from jaxrm.quant._uniform import MSE_RATIOS


def _setup():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 4)).astype(np.float32)
    q = quant.uniform({"w": w}, 8, axis=-1, where="w")
    batches = [(rng.standard_normal((8, 16)) * s).astype(np.float32) for s in (0.5, 1.0, 3.0)]
    return q, batches


def _matmul(p, x):
    return jnp.tanh(x @ p["w"])


def test_ranges_match_numpy():
    q, batches = _setup()
    a = [np.abs(b.astype(np.float64)) for b in batches]
    got = quant.calibrate_activations(_matmul, q, batches)
    np.testing.assert_allclose(float(got["w"]), max(x.max() for x in a), rtol=1e-6)
    got = quant.calibrate_activations(_matmul, q, batches, method="percentile", percentile=99.0)
    np.testing.assert_allclose(
        float(got["w"]), np.mean([np.percentile(x, 99.0) for x in a]), rtol=1e-6
    )
    got = quant.calibrate_activations(_matmul, q, batches, method="mse")
    amax = max(x.max() for x in a)

    def err(bound):
        step = bound / 127
        return sum(np.sum((x - np.minimum(np.round(x / step), 127) * step) ** 2) for x in a)

    errors = [err(r * amax) for r in MSE_RATIOS]
    np.testing.assert_allclose(
        float(got["w"]), MSE_RATIOS[int(np.argmin(errors))] * amax, rtol=1e-6
    )
    assert float(got["w"]) <= amax


def test_static_int8_matches_numpy():
    q, batches = _setup()
    ranges = quant.calibrate_activations(_matmul, q, batches)
    f = quant.quantized(lambda p, x: x @ p["w"], activations=ranges)
    x = batches[1]
    step = np.float32(ranges["w"]) / np.float32(127)
    xq = np.clip(np.round(x / step), -127, 127).astype(np.int64)
    ref = (xq @ np.asarray(q["w"].values, np.int64)) * step * np.asarray(q["w"].scale)
    np.testing.assert_allclose(np.asarray(jax.jit(f)(q, x)), ref, rtol=2e-6, atol=1e-6)
    # a batch beyond the calibrated range is clipped, not rescaled
    big = jax.jit(f)(q, 100 * x)
    assert float(jnp.max(jnp.abs(big))) <= float(
        127 * step * np.sum(np.abs(np.asarray(q["w"].dequantize())), axis=0).max()
    ) * (1 + 1e-5)


def test_calibration_bad_input():
    q, batches = _setup()
    with pytest.raises(ValueError, match="method"):
        quant.calibrate_activations(_matmul, q, batches, method="kl")
    with pytest.raises(ValueError, match="percentile"):
        quant.calibrate_activations(_matmul, q, batches, method="percentile", percentile=20)
    with pytest.raises(ValueError, match="empty"):
        quant.calibrate_activations(_matmul, q, [])
    with pytest.raises(ValueError, match="no QArray"):
        quant.calibrate_activations(_matmul, {"w": np.ones((16, 4), np.float32)}, batches)


def _lsq_reference_grads(w, s, g, bits):
    """Esser et al. (2020), eq. 3 with grid [-Q, Q] and gradient scale 1/sqrt(N Q)."""
    q = 2 ** (bits - 1) - 1
    v = w / s
    inside = (v > -q) & (v < q)
    dv = np.where(inside, np.round(v) - v, np.where(v <= -q, -q, q))
    ds = np.sum(g * dv, axis=0, keepdims=True) / np.sqrt(w.shape[0] * q)
    return np.where(inside, g, 0.0), ds


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lsq_gradient_matches_the_paper(bits):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((32, 3)).astype(np.float64)
    t = quant.lsq({"w": w.astype(np.float32)}, bits, axis=-1, where="w")
    assert t["w"].step.shape == (1, 3)
    s0 = 2 * np.mean(np.abs(w), axis=0, keepdims=True) / np.sqrt(2 ** (bits - 1) - 1)
    np.testing.assert_allclose(np.asarray(t["w"].step), s0, rtol=1e-5)
    t = jax.tree.map(lambda x: x * 0.7 if x.shape == (1, 3) else x, t)  # some entries clip
    g = rng.standard_normal(w.shape).astype(np.float32)
    grads = jax.grad(lambda tr: jnp.sum(quant.lsq_apply(tr)["w"] * g))(t)
    dw, ds = _lsq_reference_grads(
        np.asarray(t["w"].weight, np.float64), np.asarray(t["w"].step, np.float64), g, bits
    )
    np.testing.assert_allclose(np.asarray(grads["w"].weight), dw, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grads["w"].step), ds, rtol=1e-4, atol=1e-6)


def test_qat_ste_matches_fake_quant_and_exports_exactly():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((20, 5)).astype(np.float32)
    t = quant.lsq({"w": w}, 4, where="w")
    s = t["w"].step
    lsq_out = quant.lsq_apply(t)["w"]
    fq = quant.fake_quant(w, 4, scale=s)
    np.testing.assert_array_equal(np.asarray(lsq_out), np.asarray(fq))
    g = rng.standard_normal(w.shape).astype(np.float32)
    g_lsq = jax.grad(lambda x: jnp.sum(quant.lsq_apply({"w": t["w"].__class__(x, s, 4)})["w"] * g))
    g_fq = jax.grad(lambda x: jnp.sum(quant.fake_quant(x, 4, scale=s) * g))
    # same STE: identical inside the grid, both 0 where clipped (LSQ's bound is strict)
    a, b = np.asarray(g_lsq(jnp.asarray(w))), np.asarray(g_fq(jnp.asarray(w)))
    level = np.abs(np.asarray(w) / np.asarray(s))
    np.testing.assert_array_equal(a[level < 7], b[level < 7])
    assert np.all(a[level >= 7.5] == 0) and np.all(b[level >= 7.5] == 0)
    exported = quant.lsq_export(t)["w"]
    assert isinstance(exported, quant.QArray)
    np.testing.assert_array_equal(np.asarray(exported.dequantize()), np.asarray(lsq_out))


def test_lsq_trains_with_optax_and_stacked_fake_quant_is_per_slice():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((2, 8, 4)).astype(np.float32) * np.asarray([4.0, 0.5])[:, None, None]
    x = rng.standard_normal((16, 8)).astype(np.float32)
    target = np.einsum("bi,lio->lbo", x, w)
    t = quant.lsq({"w": w}, 3, stacked=0, where="w")
    assert t["w"].step.shape == (2, 1, 1)

    def loss(tr):
        return jnp.mean((jnp.einsum("bi,lio->lbo", x, quant.lsq_apply(tr)["w"]) - target) ** 2)

    opt = optax.adam(1e-2)
    state = opt.init(t)
    first = float(loss(t))
    for _ in range(20):
        grads = jax.grad(loss)(t)
        updates, state = opt.update(grads, state, t)
        t = optax.apply_updates(t, updates)
    assert float(loss(t)) < first
    per_slice = quant.fake_quant_tree({"w": w}, 4, stacked=0, where="w")["w"]
    for i in range(2):
        np.testing.assert_allclose(
            np.asarray(per_slice[i]), np.asarray(quant.fake_quant(w[i], 4)), rtol=1e-6
        )
