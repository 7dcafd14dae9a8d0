"""calib.collect against statistics computed by hand from each layer's inputs."""

from __future__ import annotations

import chex
import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrm import calib


def _gram(x):
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return x.T @ x


def _check(ls, inputs, slice_index=0):
    """``inputs``: (rows, d_in) activations of the slice, in the leaf's feature order."""
    x = np.asarray(inputs, np.float64)
    np.testing.assert_allclose(ls.hessian[slice_index], x.T @ x, rtol=2e-5, atol=1e-4)
    np.testing.assert_allclose(ls.abs_sum[slice_index], np.abs(x).sum(0), rtol=2e-5, atol=1e-4)
    np.testing.assert_allclose(ls.abs_max[slice_index], np.abs(x).max(0), rtol=1e-6, atol=1e-6)
    assert ls.rows[slice_index] == x.shape[0]
    np.testing.assert_allclose(ls.norms()[slice_index], np.linalg.norm(x, axis=0), rtol=1e-5)


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(8, name="Dense_0")(x))
        return nn.Dense(3, name="Dense_1")(h)


def test_linen_mlp_hessians_are_gram_matrices_of_layer_inputs():
    m = _MLP()
    x = jax.random.normal(jax.random.key(0), (4, 5, 6))
    p = m.init(jax.random.key(1), x)["params"]
    s = calib.collect(lambda p, b: m.apply({"params": p}, b), p, [x])
    assert list(s) == ["Dense_0/kernel", "Dense_1/kernel"]
    ls = s["Dense_0/kernel"]
    assert (ls.kind, ls.stacked, ls.contract, ls.out) == ("dense", (), (0,), (1,))
    _check(ls, np.asarray(x).reshape(-1, 6))
    h = np.maximum(np.asarray(x).reshape(-1, 6) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    _check(s["Dense_1/kernel"], h)
    assert s.skipped == ()


class _ConvBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), strides=(2, 2), padding="SAME")(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        return nn.Conv(2, (1, 1))(nn.relu(x))


def _im2col_hwi(x, kh, kw, stride, pad):
    """Patches of an NHWC input, features in the HWIO kernel's (h, w, in) order."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), pad[0], pad[1], (0, 0)))
    n, hh, ww, _ = x.shape
    rows = []
    for i in range(0, hh - kh + 1, stride):
        for j in range(0, ww - kw + 1, stride):
            rows.append(x[:, i : i + kh, j : j + kw, :].reshape(n, -1))
    return np.concatenate(rows, 0)


def test_conv_statistics_are_im2col_patches_in_kernel_order():
    m = _ConvBN()
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
    v = m.init(jax.random.key(1), x)
    fn = lambda p, b: m.apply({"params": p, "batch_stats": v["batch_stats"]}, b)
    s = calib.collect(fn, v["params"], [x])
    ls = s["Conv_0/kernel"]
    assert (ls.kind, ls.stacked, ls.contract, ls.out, ls.d_in) == ("conv", (), (0, 1, 2), (3,), 27)
    # SAME padding of 7 with stride 2 and a 3-window: 1 before, 1 after.
    _check(ls, _im2col_hwi(x, 3, 3, 2, ((1, 1), (1, 1))))
    # The patch features line up with the kernel: patches @ kernel is the conv.
    y = _im2col_hwi(x, 3, 3, 2, ((1, 1), (1, 1))) @ np.asarray(
        v["params"]["Conv_0"]["kernel"]
    ).reshape(27, 4)
    y_conv = jax.lax.conv_general_dilated(
        x,
        v["params"]["Conv_0"]["kernel"],
        (2, 2),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(
        np.sort(y.ravel()), np.sort(np.asarray(y_conv).ravel()), rtol=1e-4, atol=1e-4
    )
    assert s["Conv_1/kernel"].contract == (0, 1, 2) and s["Conv_1/kernel"].d_in == 4


class _Block(nn.Module):
    """Pre-norm causal attention with head axes and an MLP, scanned over layers."""

    heads: int = 2
    hd: int = 4

    @nn.compact
    def __call__(self, x, _):
        h = nn.LayerNorm(use_bias=False, use_scale=False)(x)
        q = nn.DenseGeneral((self.heads, self.hd), use_bias=False, name="q")(h)
        k = nn.DenseGeneral((self.heads, self.hd), use_bias=False, name="k")(h)
        v = nn.DenseGeneral((self.heads, self.hd), use_bias=False, name="v")(h)
        a = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(self.hd)
        t = x.shape[1]
        a = jnp.where(jnp.tril(jnp.ones((t, t), bool)), a, -1e9)
        o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(a, -1), v)
        x = x + nn.DenseGeneral(x.shape[-1], axis=(-2, -1), use_bias=False, name="o")(o)
        h = nn.LayerNorm(use_bias=False, use_scale=False)(x)
        u = nn.gelu(nn.Dense(16, use_bias=False, name="up")(h))
        return x + nn.Dense(x.shape[-1], use_bias=False, name="down")(u), None


class _Decoder(nn.Module):
    layers: int = 3

    @nn.compact
    def __call__(self, x):
        blocks = nn.scan(
            _Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=self.layers
        )
        x, _ = blocks(name="blocks")(x, None)
        return x


def _ln(x):
    x = np.asarray(x, np.float64)
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _block_inputs(p, i, x):
    """numpy forward of block ``i``; returns its output and each kernel's input rows."""
    g = lambda n: np.asarray(p[n]["kernel"][i], np.float64)
    h = _ln(x)
    q, k, v = (np.einsum("btd,dhe->bthe", h, g(n)) for n in "qkv")
    a = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    t = x.shape[1]
    a = np.where(np.tril(np.ones((t, t), bool)), a, -1e9)
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", a, v)
    x = x + np.einsum("bqhd,hde->bqe", o, g("o"))
    h2 = _ln(x)
    u = _gelu(h2 @ g("up"))
    x = x + u @ g("down")
    d = h.shape[-1]
    return x, {
        "q": h.reshape(-1, d),
        "k": h.reshape(-1, d),
        "v": h.reshape(-1, d),
        "o": o.reshape(-1, o.shape[2] * o.shape[3]),
        "up": h2.reshape(-1, d),
        "down": u.reshape(-1, u.shape[-1]),
    }


def test_scanned_transformer_is_calibrated_slice_by_slice():
    m = _Decoder()
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    p = m.init(jax.random.key(1), x)["params"]
    s = calib.collect(lambda p, b: m.apply({"params": p}, b), p, [x])
    assert s["blocks/q/kernel"].stacked == (0,)
    assert (s["blocks/q/kernel"].contract, s["blocks/q/kernel"].out) == ((1,), (2, 3))
    assert (s["blocks/o/kernel"].contract, s["blocks/o/kernel"].out) == ((1, 2), (3,))
    assert s["blocks/o/kernel"].hessian.shape == (3, 8, 8)
    pb = p["blocks"]
    h = np.asarray(x, np.float64)
    for i in range(3):
        h, inputs = _block_inputs(pb, i, h)
        for name, rows in inputs.items():
            _check(s[f"blocks/{name}/kernel"], rows, i)


L, D = 3, 6


class _NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(D, D, rngs=rngs)

    def __call__(self, x):
        return jnp.tanh(self.lin(x))


class _NNXNet(nnx.Module):
    def __init__(self, rngs):
        @nnx.split_rngs(splits=L)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs):
            return _NNXBlock(rngs)

        self.blocks = create(rngs)
        self.head = nnx.Linear(D, 2, rngs=rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def step(block, x):
            return block(x)

        return self.head(step(self.blocks, x))


def test_nnx_scan_layers_and_head():
    gd, state = nnx.split(_NNXNet(nnx.Rngs(0)), nnx.Param)
    x = jax.random.normal(jax.random.key(1), (5, D))
    s = calib.collect(lambda p, b: nnx.merge(gd, p)(b), state, [x])
    ls = s["blocks/lin/kernel"]
    assert (ls.stacked, ls.contract, ls.out) == ((0,), (1,), (2,))
    w = np.asarray(state["blocks"]["lin"]["kernel"][...], np.float64)
    b = np.asarray(state["blocks"]["lin"]["bias"][...], np.float64)
    h = np.asarray(x, np.float64)
    for i in range(L):
        _check(ls, h, i)
        h = np.tanh(h @ w[i] + b[i])
    _check(s["head/kernel"], h)


def test_equinox_linear_weights_are_out_by_in():
    mlp = eqx.nn.MLP(4, 3, 8, 2, key=jax.random.key(0))
    params, static = eqx.partition(mlp, eqx.is_array)
    x = jax.random.normal(jax.random.key(1), (7, 4))
    s = calib.collect(lambda p, b: jax.vmap(eqx.combine(p, static))(b), params, [x])
    ls = s["layers/0/weight"]
    assert (ls.contract, ls.out) == ((1,), (0,))
    _check(ls, x)
    h = jax.nn.relu(x @ mlp.layers[0].weight.T + mlp.layers[0].bias)
    _check(s["layers/1/weight"], h)


def test_streaming_equals_one_shot_accumulation():
    m = _Decoder(layers=2)
    xs = [jax.random.normal(jax.random.key(i), (2, 5, 8)) for i in range(3)]
    p = m.init(jax.random.key(9), xs[0])["params"]
    fn = lambda p, b: m.apply({"params": p}, b)
    streamed = calib.collect(fn, p, iter(xs))
    whole = calib.collect(fn, p, [jnp.concatenate(xs)])
    assert streamed.batches == 3 and whole.batches == 1
    for path in whole:
        a, b = streamed[path], whole[path]
        np.testing.assert_allclose(a.hessian, b.hessian, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.abs_sum, b.abs_sum, rtol=1e-5, atol=1e-5)
        chex.assert_trees_all_equal(a.abs_max, b.abs_max)
        chex.assert_trees_all_equal(a.rows, b.rows)


def test_tied_embedding_read_as_transposed_matmul():
    emb = jax.random.normal(jax.random.key(0), (10, 4))
    params = {"embed": {"embedding": emb}}

    def fn(p, tokens):
        h = p["embed"]["embedding"][tokens]
        return h @ p["embed"]["embedding"].T

    toks = jnp.array([[1, 2, 3], [4, 5, 9]])
    s = calib.collect(fn, params, [toks])
    ls = s["embed/embedding"]
    assert (ls.contract, ls.out) == ((1,), (0,))
    _check(ls, np.asarray(emb)[np.asarray(toks)].reshape(-1, 4))


def test_weight_in_a_while_loop_is_reported_skipped():
    params = {"w": jnp.eye(3), "v": jnp.ones((3, 3))}

    def fn(p, x):
        def body(c):
            return c[0] + 1, c[1] @ p["w"]

        _, x = jax.lax.while_loop(lambda c: c[0] < jnp.sum(x) + 2, body, (0.0, x))
        return x @ p["v"]

    s = calib.collect(fn, params, [jnp.ones((2, 3))])
    assert list(s) == ["v"]
    assert any("'w'" in note for note in s.skipped)


def test_bad_input():
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    fn = lambda p, x: x @ p["dense"]["kernel"] + p["dense"]["bias"]
    with pytest.raises(ValueError, match="empty"):
        calib.collect(fn, params, [])
    with pytest.raises(ValueError, match="dense/bias"):
        calib.collect(fn, params, [jnp.ones((2, 3))], where="bias")
    with pytest.raises(TypeError, match="fn"):
        calib.collect(None, params, [jnp.ones((2, 3))])
    s = calib.collect(fn, params, [jnp.ones((2, 3))])
    other = {"dense": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}
    with pytest.raises(ValueError, match=r"dense/kernel.*another model"):
        s.pick(other)
    with pytest.raises(ValueError, match=r"another model.*dense/kernel"):
        s.pick({"mlp": {"kernel": jnp.ones((3, 2))}})
