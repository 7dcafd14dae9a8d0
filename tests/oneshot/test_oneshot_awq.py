"""AWQ's scale search and SmoothQuant's migration against their defining properties."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from test_oneshot_gptq import _correlated, _dense, _err, _fn

from jaxrm import calib, quant


def _outliers(seed, n, d):
    x = np.array(_correlated(seed, n, d, scale_spread=False))
    x[:, :3] *= 30.0  # a few outlier channels, as in LLM activations
    return jnp.asarray(x)


@pytest.mark.parametrize("group_size", [None, 16])
def test_awq_scales_reduce_activation_weighted_error(group_size):
    params = _dense(0, 64, 16)
    x = _outliers(1, 400, 64)
    stats = calib.collect(_fn, params, [x])
    tree, scales = quant.awq(params, stats, 3, group_size=group_size)
    s = np.asarray(scales["dense"]["kernel"])
    assert s.shape == (64, 1) and scales["dense"]["bias"] is None
    w_eff = np.asarray(quant.dequantize(tree)["dense"]["kernel"]) / s
    rtn = quant.dequantize(quant.rtn(params, stats, 3, group_size=group_size))["dense"]["kernel"]
    w = params["dense"]["kernel"]
    assert _err(w, w_eff, x) < 0.9 * _err(w, rtn, x)
    # The error of the chosen scales is the least over the searched exponents.
    h = stats["dense/kernel"].hessian[0]
    a = np.asarray(stats["dense/kernel"].mean_abs()[0])
    d = np.asarray(w, np.float64) - w_eff
    chosen = float(np.sum((h @ d) * d))
    for alpha in (0.0, 0.25, 0.5, 0.75):
        t = a**alpha
        t = t / np.sqrt(t.max() * t.min())
        assert chosen <= _rtn_err(np.asarray(w, np.float64), h, t, 3, group_size or 64) * (1 + 1e-6)


def _rtn_err(w, h, s, bits, g):
    ws = w * s[:, None]
    x = ws.reshape(-1, g, ws.shape[1])
    lo, hi = np.minimum(x.min(1, keepdims=True), 0), np.maximum(x.max(1, keepdims=True), 0)
    sc = (hi - lo) / (2**bits - 1)
    z = np.round(-lo / sc)
    q = ((np.clip(np.round(x / sc) + z, 0, 2**bits - 1) - z) * sc).reshape(ws.shape)
    d = w - q / s[:, None]
    return float(np.sum((h @ d) * d))


def test_smoothquant_migration_preserves_outputs_and_balances_ranges():
    params = _dense(2, 32, 8)
    x = _outliers(3, 200, 32)
    stats = calib.collect(_fn, params, [x])
    new, scales = quant.smooth(params, stats, alpha=0.5)
    s = np.asarray(scales["dense"]["kernel"])[:, 0]
    w, w2 = np.asarray(params["dense"]["kernel"]), np.asarray(new["dense"]["kernel"])
    xn = np.asarray(x)
    np.testing.assert_allclose((xn / s) @ w2, xn @ w, rtol=1e-4, atol=1e-3)
    # alpha = 0.5: each input channel's activation max equals its weight max.
    np.testing.assert_allclose(np.abs(xn / s).max(0), np.abs(w2).max(1), rtol=1e-5)

    # w8a8 (activations per tensor, weights per channel): less error after migration.
    def w8a8(xa, wa):
        qx = np.round(xa / (np.abs(xa).max() / 127)) * (np.abs(xa).max() / 127)
        sw = np.abs(wa).max(0, keepdims=True) / 127
        return qx @ (np.round(wa / sw) * sw)

    ref = xn @ w
    assert np.linalg.norm(w8a8(xn / s, w2) - ref) < 0.5 * np.linalg.norm(w8a8(xn, w) - ref)
    with pytest.raises(ValueError, match="alpha"):
        quant.smooth(params, stats, alpha=1.5)
