"""Wanda and SparseGPT against float64 numpy references of the papers' algorithms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oneshot_ref import sparsegpt as ref_sparsegpt
from _oneshot_ref import wanda as ref_wanda
from test_oneshot_gptq import _correlated, _dense, _err, _fn, _Scanned

from jaxrm import calib, prune


def _magnitude_error(params, x, sparsity):
    m = prune.masks(prune.magnitude(params), sparsity, where="kernel")
    return _err(params["dense"]["kernel"], prune.apply(params, m)["dense"]["kernel"], x)


@pytest.mark.parametrize("target", [0.5, 0.3, prune.nm(2, 4)])
def test_wanda_matches_reference(target):
    params = _dense(0, 32, 12)
    x = _correlated(1, 200, 32)
    stats = calib.collect(_fn, params, [x])
    masks = prune.wanda(params, stats, target)
    assert masks["dense"]["bias"] is None
    keep = np.asarray(masks["dense"]["kernel"])
    norms = np.linalg.norm(np.asarray(x, np.float64), axis=0)
    kw = {"nm": (2, 4)} if isinstance(target, prune.NM) else {"sparsity": target}
    ref = ref_wanda(np.asarray(params["dense"]["kernel"]).T, norms, **kw)
    np.testing.assert_array_equal(keep.T, ref)
    if isinstance(target, float):
        np.testing.assert_array_equal(keep.sum(0), round((1 - target) * 32))
    else:
        np.testing.assert_array_equal(keep.reshape(8, 4, 12).sum(1), 2)


@pytest.mark.parametrize("target,block", [(0.5, 16), (0.7, 32), (prune.nm(2, 4), 16)])
def test_sparsegpt_matches_reference(target, block):
    params = _dense(2, 64, 16)
    x = _correlated(3, 300, 64)
    stats = calib.collect(_fn, params, [x])
    new, masks = prune.sparsegpt(params, stats, target, block=block)
    keep = np.asarray(masks["dense"]["kernel"])
    kw = {"nm": (2, 4)} if isinstance(target, prune.NM) else {"sparsity": target}
    h = stats["dense/kernel"].hessian[0]
    ref_keep, ref_w = ref_sparsegpt(np.asarray(params["dense"]["kernel"]).T, h, block=block, **kw)
    np.testing.assert_array_equal(keep.T, ref_keep)
    w = np.asarray(new["dense"]["kernel"])
    np.testing.assert_allclose(w.T, ref_w, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(w[~keep], 0.0)
    if isinstance(target, float):
        assert keep.sum() == round((1 - target) * keep.size)
    else:
        np.testing.assert_array_equal(keep.reshape(16, 4, 16).sum(1), 2)


@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_errors_below_magnitude_on_correlated_inputs(sparsity):
    params = _dense(4, 64, 32)
    x = _correlated(5, 512, 64)
    stats = calib.collect(_fn, params, [x])
    w = params["dense"]["kernel"]
    e_mag = _magnitude_error(params, x, sparsity)
    e_wanda = _err(
        w, prune.apply(params, prune.wanda(params, stats, sparsity))["dense"]["kernel"], x
    )
    e_sgpt = _err(w, prune.sparsegpt(params, stats, sparsity)[0]["dense"]["kernel"], x)
    assert e_wanda < 0.9 * e_mag
    assert e_sgpt < 0.9 * e_mag


def test_stacked_slices_pruned_one_by_one():
    m = _Scanned()
    x = jax.random.normal(jax.random.key(0), (4, 6, 16))
    p = m.init(jax.random.key(1), x)["params"]
    stats = calib.collect(lambda p, b: m.apply({"params": p}, b), p, [x])
    new, masks = prune.sparsegpt(p, stats, prune.nm(2, 4), block=8)
    wm = prune.wanda(p, stats, 0.5)
    for name in ("qkv", "o"):
        ls = stats[f"blocks/{name}/kernel"]
        w3 = ls.matrix(np.asarray(p["blocks"][name]["kernel"]))
        k3 = ls.matrix(np.asarray(masks["blocks"][name]["kernel"]))
        n3 = ls.matrix(np.asarray(new["blocks"][name]["kernel"]))
        wk3 = ls.matrix(np.asarray(wm["blocks"][name]["kernel"]))
        for i in range(3):
            rk, rw = ref_sparsegpt(w3[i].T, ls.hessian[i], nm=(2, 4), block=8)
            np.testing.assert_array_equal(k3[i].T, rk)
            np.testing.assert_allclose(n3[i].T, rw, rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(wk3[i].T, ref_wanda(w3[i].T, ls.norms()[i], sparsity=0.5))


def test_bad_input():
    params = _dense(6, 16, 4)
    stats = calib.collect(_fn, params, [_correlated(7, 40, 16)])
    with pytest.raises(ValueError, match="sparsity at leaf 'dense/kernel'"):
        prune.wanda(params, stats, 1.5)
    with pytest.raises(ValueError, match=r"dense/kernel.*divisible"):
        prune.sparsegpt(params, stats, prune.nm(2, 5))
    with pytest.raises(ValueError, match="another model"):
        prune.sparsegpt(_dense(6, 8, 4), stats, 0.5)
    x = _correlated(9, 40, 4, scale_spread=False)
    stats = calib.collect(_fn, params, [jnp.concatenate([x] * 4, axis=1)])
    with pytest.raises(ValueError, match=r"dense/kernel.*singular"):
        prune.sparsegpt(params, stats, 0.5, damp=0.0)
    new, _ = prune.sparsegpt(params, stats, 0.5)
    assert np.all(np.isfinite(np.asarray(new["dense"]["kernel"])))
