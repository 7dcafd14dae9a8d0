"""GPTQ and RTN against the float64 numpy reference of the paper's Algorithm 1."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oneshot_ref import gptq as ref_gptq

from jaxrm import calib, coding, quant


def _correlated(key, n, d, scale_spread=True):
    rng = np.random.default_rng(key)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    if scale_spread:
        x *= np.exp(rng.normal(size=d))  # a few strong features, as in LLM activations
    return jnp.asarray(x, jnp.float32)


def _dense(key, d_in, d_out):
    w = np.random.default_rng(key).normal(size=(d_in, d_out)).astype(np.float32)
    return {"dense": {"kernel": jnp.asarray(w), "bias": jnp.zeros(d_out)}}


def _fn(p, x):
    return x @ p["dense"]["kernel"] + p["dense"]["bias"]


def _err(w, q, x):
    x = np.asarray(x, np.float64)
    return np.linalg.norm(x @ np.asarray(w, np.float64) - x @ np.asarray(q, np.float64))


@pytest.mark.parametrize(
    "bits,group_size,symmetric,block",
    [(4, None, False, 128), (3, 16, False, 16), (4, 32, True, 16), (2, 64, False, 32)],
)
def test_same_integers_as_reference(bits, group_size, symmetric, block):
    params = _dense(0, 64, 24)
    x = _correlated(1, 300, 64)
    stats = calib.collect(_fn, params, [x[:150], x[150:]])
    q = quant.gptq(params, stats, bits, group_size=group_size, symmetric=symmetric, block=block)
    qa = q["dense"]["kernel"]
    assert isinstance(qa, quant.QArray) and qa.bits == bits
    assert q["dense"]["bias"] is params["dense"]["bias"]
    h = stats["dense/kernel"].hessian[0]
    lv, s, z = ref_gptq(
        np.asarray(params["dense"]["kernel"]).T,
        h,
        bits,
        group_size=group_size,
        symmetric=symmetric,
        block=block,
    )
    np.testing.assert_array_equal(np.asarray(qa.values, np.int64), lv.T.astype(np.int64))
    g = group_size or 64
    w_ref = (lv - np.repeat(z, g, axis=1)) * np.repeat(s, g, axis=1)
    np.testing.assert_allclose(
        np.asarray(quant.dequantize(q)["dense"]["kernel"]), w_ref.T, rtol=1e-5, atol=1e-6
    )


def test_act_order_is_gptq_on_permuted_columns():
    params = _dense(2, 32, 8)
    x = _correlated(3, 200, 32)
    stats = calib.collect(_fn, params, [x])
    h = stats["dense/kernel"].hessian[0]
    perm = np.argsort(-np.diag(h), kind="stable")
    q = quant.gptq(params, stats, 3, act_order=True, block=8)
    w = np.asarray(params["dense"]["kernel"]).T
    lv, _, _ = ref_gptq(w[:, perm], h[np.ix_(perm, perm)], 3, block=8)
    np.testing.assert_array_equal(np.asarray(q["dense"]["kernel"].values)[perm].T, lv)


@pytest.mark.parametrize("bits,group_size", [(3, None), (4, None), (3, 16)])
def test_reconstruction_error_below_rtn_on_correlated_inputs(bits, group_size):
    params = _dense(4, 64, 32)
    x = _correlated(5, 512, 64)
    stats = calib.collect(_fn, params, [x])
    w = params["dense"]["kernel"]
    e_gptq = _err(
        w,
        quant.dequantize(quant.gptq(params, stats, bits, group_size=group_size))["dense"]["kernel"],
        x,
    )
    e_rtn = _err(
        w,
        quant.dequantize(quant.rtn(params, stats, bits, group_size=group_size))["dense"]["kernel"],
        x,
    )
    e_act = _err(
        w,
        quant.dequantize(quant.gptq(params, stats, bits, group_size=group_size, act_order=True))[
            "dense"
        ]["kernel"],
        x,
    )
    assert e_gptq < 0.8 * e_rtn and e_act < 0.8 * e_rtn


def test_rtn_is_round_to_nearest():
    params = _dense(6, 16, 4)
    stats = calib.collect(_fn, params, [_correlated(7, 50, 16)])
    q = quant.rtn(params, stats, 4)["dense"]["kernel"]
    w = np.asarray(params["dense"]["kernel"], np.float64)
    lo, hi = np.minimum(w.min(0), 0), np.maximum(w.max(0), 0)
    s = (hi - lo) / 15
    z = np.round(-lo / s)
    np.testing.assert_array_equal(np.asarray(q.values), np.clip(np.round(w / s) + z, 0, 15))


class _Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
        class Blk(nn.Module):
            @nn.compact
            def __call__(self, h, _):
                a = nn.DenseGeneral((2, 8), use_bias=False, name="qkv")(h)
                o = nn.DenseGeneral(h.shape[-1], axis=(-2, -1), use_bias=False, name="o")(
                    jnp.tanh(a)
                )
                return h + o, None

        s = nn.scan(Blk, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
        return s(name="blocks")(x, None)[0]


def test_stacked_heads_quantized_per_slice_with_group_scales():
    m = _Scanned()
    x = jax.random.normal(jax.random.key(0), (4, 6, 16))
    p = m.init(jax.random.key(1), x)["params"]
    stats = calib.collect(lambda p, b: m.apply({"params": p}, b), p, [x])
    q = quant.gptq(p, stats, 4, group_size=8, block=8)
    o = q["blocks"]["o"]["kernel"]  # (layers, heads, hd, emb), groups of 8 = one head
    assert o.values.shape == (3, 2, 8, 16) and o.scale.shape == (3, 2, 1, 16)
    qkv = q["blocks"]["qkv"]["kernel"]  # (layers, emb, heads, hd), 16 inputs in 2 groups
    assert qkv.scale.shape == (3, 2, 2, 8)
    for name, qa in (("o", o), ("qkv", qkv)):
        ls = stats[f"blocks/{name}/kernel"]
        w3 = ls.matrix(np.asarray(p["blocks"][name]["kernel"]))
        v3 = ls.matrix(np.asarray(qa.values))
        for i in range(3):
            lv, _, _ = ref_gptq(w3[i].T, ls.hessian[i], 4, group_size=8, block=8)
            np.testing.assert_array_equal(v3[i].T, lv)
    # The file decodes to the dequantized tree, group scales included.
    back = coding.decode(coding.encode(q))
    np.testing.assert_allclose(
        back["blocks"]["o"]["kernel"], quant.dequantize(q)["blocks"]["o"]["kernel"], rtol=1e-6
    )


def test_singular_hessian_needs_damping():
    params = _dense(8, 8, 4)
    x = _correlated(9, 40, 4, scale_spread=False)
    x = jnp.concatenate([x, x], axis=1)  # rank 4 of 8: H is singular
    stats = calib.collect(_fn, params, [x])
    q = quant.gptq(params, stats, 4, damp=0.01)
    assert np.all(np.isfinite(np.asarray(quant.dequantize(q)["dense"]["kernel"])))
    with pytest.raises(ValueError, match=r"dense/kernel.*singular"):
        quant.gptq(params, stats, 4, damp=0.0)


def test_dead_features_are_zeroed_as_in_the_reference():
    params = _dense(10, 8, 4)
    x = np.array(_correlated(11, 40, 8))
    x[:, 3] = 0.0
    stats = calib.collect(_fn, params, [jnp.asarray(x)])
    q = quant.dequantize(quant.gptq(params, stats, 4))["dense"]["kernel"]
    np.testing.assert_array_equal(np.asarray(q)[3], 0.0)


def test_bad_input():
    params = _dense(12, 16, 4)
    stats = calib.collect(_fn, params, [_correlated(13, 40, 16)])
    with pytest.raises(ValueError, match="another model"):
        quant.gptq(_dense(12, 8, 4), stats, 4)
    with pytest.raises(ValueError, match="another model"):
        quant.gptq({"mlp": params["dense"]}, stats, 4)
    with pytest.raises(ValueError, match="group_size=5"):
        quant.gptq(params, stats, 4, group_size=5)
    with pytest.raises(ValueError, match="bits"):
        quant.gptq(params, stats, 9)
    with pytest.raises(ValueError, match=r"no statistics.*dense/bias"):
        quant.gptq(params, stats, 4, where="bias")
    with pytest.raises(TypeError, match="Stats"):
        quant.gptq(params, {"dense/kernel": None}, 4)
