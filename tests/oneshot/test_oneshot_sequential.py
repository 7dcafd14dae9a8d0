"""Sequential mode: layer l is calibrated on the outputs of the compressed layers before it."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oneshot_ref import gptq as ref_gptq
from _oneshot_ref import sparsegpt as ref_sparsegpt

from jaxrm import calib, prune, quant


class _Layer(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return jnp.tanh(nn.Dense(x.shape[-1], name="dense")(x)), None


class _Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
        s = nn.scan(_Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
        return s(name="layers")(x, None)[0]


def _setup():
    m = _Stack()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(96, 16)) @ rng.normal(size=(16, 16)), jnp.float32)
    p = m.init(jax.random.key(1), x)["params"]
    return m, p, [x[:48], x[48:]]


@pytest.mark.slow
def test_sequential_gptq_calibrates_layer_two_on_quantized_layer_one():
    m, p, batches = _setup()
    fn = lambda p, b: m.apply({"params": p}, b)
    tree, masks = calib.sequential(
        fn, p, batches, lambda p, s: (quant.gptq(p, s, 3, block=8), None)
    )
    qa = tree["layers"]["dense"]["kernel"]
    assert isinstance(qa, quant.QArray) and qa.values.shape == (2, 16, 16)
    assert masks["layers"]["dense"]["kernel"] is None
    x = np.concatenate([np.asarray(b, np.float64) for b in batches])
    w = np.asarray(p["layers"]["dense"]["kernel"], np.float64)
    b = np.asarray(p["layers"]["dense"]["bias"], np.float64)
    h = x
    for i in range(2):
        lv, s, z = ref_gptq(w[i].T, h.T @ h, 3, block=8)
        np.testing.assert_array_equal(np.asarray(qa.values[i]).T, lv)
        h = np.tanh(h @ ((lv - z) * s).T + b[i])  # the next layer sees the quantized one
    # One-shot GPTQ calibrates layer two on float outputs instead.
    one = quant.gptq(p, calib.collect(fn, p, batches), 3, block=8)["layers"]["dense"]["kernel"]
    np.testing.assert_array_equal(one.values[0], qa.values[0])
    assert np.any(np.asarray(one.values[1]) != np.asarray(qa.values[1]))


@pytest.mark.slow
def test_sequential_sparsegpt_keeps_masks_per_slice():
    m, p, batches = _setup()
    fn = lambda p, b: m.apply({"params": p}, b)
    tree, masks = calib.sequential(fn, p, batches, lambda p, s: prune.sparsegpt(p, s, 0.5, block=8))
    keep = np.asarray(masks["layers"]["dense"]["kernel"])
    w_new = np.asarray(tree["layers"]["dense"]["kernel"], np.float64)
    x = np.concatenate([np.asarray(b, np.float64) for b in batches])
    w = np.asarray(p["layers"]["dense"]["kernel"], np.float64)
    b = np.asarray(p["layers"]["dense"]["bias"], np.float64)
    h = x
    for i in range(2):
        rk, rw = ref_sparsegpt(w[i].T, h.T @ h, sparsity=0.5, block=8)
        np.testing.assert_array_equal(keep[i].T, rk)
        np.testing.assert_allclose(w_new[i].T, rw, rtol=1e-4, atol=1e-4)
        h = np.tanh(h @ rw.T + b[i])


def test_sequential_needs_a_sequence_of_batches():
    m, p, batches = _setup()
    with pytest.raises(TypeError, match="sequence"):
        calib.sequential(lambda p, b: m.apply({"params": p}, b), p, iter(batches), None)
