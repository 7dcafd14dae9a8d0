"""Byte-budget allocation against brute force, and joint SparseGPT + quantization."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from test_oneshot_gptq import _correlated, _err

from jaxrm import budget, calib, coding, prune, quant


def _toy():
    rng = np.random.default_rng(0)
    shapes = [(16, 12), (12, 8), (8, 4)]
    params = {
        f"l{i}": {"kernel": jnp.asarray(rng.normal(size=s), jnp.float32)}
        for i, s in enumerate(shapes)
    }

    def fn(p, x):
        for i in range(3):
            x = jnp.tanh(x @ p[f"l{i}"]["kernel"])
        return x

    stats = calib.collect(fn, params, [_correlated(1, 256, 16)])
    return params, stats


MENU = (budget.Option(), budget.Option(8), budget.Option(3), budget.Option(None, prune.nm(2, 4)))


def test_allocation_is_the_brute_force_optimum_and_fits():
    params, stats = _toy()
    options = {}
    for p in stats:
        for j, opt in enumerate(MENU):
            options[p, j] = budget.compress(params, stats, p, opt)
    paths = list(stats)
    errors = {}
    for p in paths:  # tr(dW^T H dW) in float64, from the pruned/quantized leaf
        w = np.asarray(params[p.split("/")[0]]["kernel"], np.float64)
        for j in range(len(MENU)):
            value, mask = options[p, j]
            w_hat = np.asarray(quant.dequantize(value), np.float64)
            if mask is not None:
                w_hat = w_hat * np.asarray(mask)
            d = w - w_hat
            errors[p, j] = float(np.trace(d.T @ stats[p].hessian[0] @ d))
    sizes, totals = {}, {}
    for combo in itertools.product(range(len(MENU)), repeat=3):
        tree = dict(params)
        masks = {p: {"kernel": None} for p in params}
        for p, j in zip(paths, combo):
            value, mask = options[p, j]
            tree[p.split("/")[0]] = {"kernel": value}
            masks[p.split("/")[0]] = {"kernel": mask}
        sizes[combo] = len(coding.encode(tree, masks=masks))
        totals[combo] = sum(errors[p, j] for p, j in zip(paths, combo))
    lo, hi = min(sizes.values()), max(sizes.values())
    for b in np.linspace(lo, hi, 7).astype(int)[1:-1]:
        a = budget.allocate(params, stats, int(b), menu=MENU)
        assert len(a.data) <= b
        best = min(t for c, t in totals.items() if sizes[c] <= b)
        np.testing.assert_allclose(a.error, best, rtol=1e-7)
        # The file decodes to the tree it reports.
        back = coding.decode(a.data)
        deq = quant.dequantize(a.tree)
        for p in params:
            np.testing.assert_allclose(
                back[p]["kernel"],
                np.asarray(deq[p]["kernel"])
                * (1 if a.masks[p]["kernel"] is None else np.asarray(a.masks[p]["kernel"])),
                rtol=1e-6,
            )
    with pytest.raises(ValueError, match="smallest file"):
        budget.allocate(params, stats, lo - 1, menu=MENU)


def test_joint_sparsegpt_quant_keeps_pattern_and_beats_magnitude_plus_rtn():
    rng = np.random.default_rng(3)
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)}}
    x = _correlated(4, 400, 64)
    stats = calib.collect(lambda p, b: b @ p["dense"]["kernel"], params, [x])
    tree, masks = budget.sparsegpt_quant(params, stats, prune.nm(2, 4), 4, block=16)
    qa, keep = tree["dense"]["kernel"], np.asarray(masks["dense"]["kernel"])
    assert isinstance(qa, quant.QArray) and qa.bits == 4
    np.testing.assert_array_equal(keep.reshape(16, 4, 16).sum(1), 2)
    w_hat = np.asarray(qa.dequantize())
    np.testing.assert_array_equal(w_hat[~keep], 0.0)
    back = coding.decode(coding.encode(tree, masks=masks))
    np.testing.assert_allclose(back["dense"]["kernel"], w_hat, rtol=1e-6)
    m = prune.masks(prune.magnitude(params), 0.5, where="kernel", pattern=prune.nm(2, 4, axis=0))
    base = prune.apply(params, m)
    rtn = quant.dequantize(quant.rtn(base, stats, 4))["dense"]["kernel"]
    rtn = np.where(np.asarray(m["dense"]["kernel"]), np.asarray(rtn), 0.0)
    w = params["dense"]["kernel"]
    assert _err(w, w_hat, x) < 0.7 * _err(w, rtn, x)
