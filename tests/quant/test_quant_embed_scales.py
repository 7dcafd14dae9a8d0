"""Scales of embedding tables: one per row (token), against a numpy reference.

A lookup returns rows and a tied output projection (``Embed.attend``)
contracts over the features, so each row is an output channel: per-row
scales (``axis=0``) are the right channel, per-column ones (``axis=-1``, one
scale per feature over the whole vocabulary) are coarser. The layouts say the
same for Linen, NNX and Equinox tables (kind ``embedding``, features as the
output axis, vocabulary as the row axis).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx

from jaxrm import quant
from jaxrm import tree as jtree

ROWS = [("embedding$", 0), (".*", -1)]


def _numpy_int8(table: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 round-to-nearest with one scale per index along ``axis``."""
    table = np.asarray(table, np.float32)
    other = 1 - axis
    scale = (np.abs(table).max(axis=other, keepdims=True) / np.float32(127)).astype(np.float32)
    return np.clip(np.round(table / scale), -127, 127), scale


class _TiedLM(nn.Module):
    """Embedding, one pre-norm attention block with head axes, tied output projection."""

    @nn.compact
    def __call__(self, ids):
        embed = nn.Embed(64, 32)
        x = embed(ids)
        h = nn.LayerNorm()(x)
        q, k, v = (nn.DenseGeneral((4, 8), name=n)(h) for n in ("query", "key", "value"))
        a = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8.0), axis=-1)
        x = x + nn.DenseGeneral(32, axis=(-2, -1), name="out")(
            jnp.einsum("bhqk,bkhd->bqhd", a, v))
        return embed.attend(nn.LayerNorm()(x))


class _NnxTiedLM(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(64, 32, rngs=rngs)
        self.up = nnx.Linear(32, 48, rngs=rngs)
        self.down = nnx.Linear(48, 32, rngs=rngs)

    def __call__(self, ids):
        x = self.embed(ids)
        x = x + self.down(nnx.gelu(self.up(x)))
        return self.embed.attend(x)


def _check_int8(q, table, scale_shape, reduce):
    """``q`` against numpy per-channel int8 (XLA may divide by a reciprocal: the
    scales agree to 1 ulp, the levels but for a rare tie that rounds the other way)."""
    table = np.asarray(table, np.float32)
    scale = (np.abs(table).max(axis=reduce, keepdims=True) / np.float32(127)).astype(np.float32)
    assert q.scale.shape == scale_shape == scale.shape
    np.testing.assert_allclose(np.asarray(q.scale), scale, rtol=2.5e-7, atol=0)
    levels = np.asarray(q.values, np.float32)
    ref = np.clip(np.round(table / scale), -127, 127)
    assert np.abs(levels - ref).max() <= 1 and np.mean(levels != ref) < 1e-3
    err = np.abs(np.asarray(quant.dequantize(q)) - table)
    assert np.all(err <= np.asarray(q.scale) * (0.5 + 1e-5))


def _check_rows(q_table, table):
    _check_int8(q_table, table, (table.shape[0], 1), (1,))


def test_linen_tied_embedding_is_quantized_per_row_and_runs_compressed():
    model, ids = _TiedLM(), jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
    params = model.init(jax.random.key(0), ids)["params"]
    q = quant.uniform(params, 8, axis=ROWS)
    table = params["Embed_0"]["embedding"]
    _check_rows(q["Embed_0"]["embedding"], table)
    # attention kernels (emb, heads, hd) with axis=-1: one scale per head_dim entry
    assert q["query"]["kernel"].scale.shape == (1, 1, 8)
    f = lambda p, x: model.apply({"params": p}, x)
    np.testing.assert_allclose(
        np.asarray(jax.jit(quant.quantized(f))(q, ids)),
        np.asarray(jax.jit(f)(quant.dequantize(q), ids)), rtol=1e-5, atol=1e-5)
    # per row is the finer channel: smaller weight error than per column on the same table
    deq_rows = np.asarray(quant.dequantize(q)["Embed_0"]["embedding"])
    cols = quant.uniform(params, 8, axis=-1, where="embedding$")["Embed_0"]["embedding"]
    assert cols.scale.shape == (1, table.shape[1])
    err = lambda d: np.linalg.norm(d - np.asarray(table)) / np.linalg.norm(np.asarray(table))
    assert err(deq_rows) < err(np.asarray(quant.dequantize(cols)))


def test_nnx_tied_embedding_is_quantized_per_row_and_runs_compressed():
    graphdef, state = nnx.split(_NnxTiedLM(nnx.Rngs(0)))
    ids = jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
    q = quant.uniform(state, 8, axis=ROWS)
    _check_rows(q["embed"]["embedding"], state["embed"]["embedding"][...])

    def f(s, x):
        return nnx.merge(graphdef, s)(x)

    np.testing.assert_allclose(
        np.asarray(jax.jit(quant.quantized(f))(q, ids)),
        np.asarray(jax.jit(f)(quant.dequantize(q), ids)), rtol=1e-5, atol=1e-5)


def test_layouts_of_embedding_tables_name_rows_and_features():
    linen = nn.Embed(64, 32).init(jax.random.key(0), jnp.zeros((1,), jnp.int32))["params"]
    _, nnx_state = nnx.split(nnx.Embed(64, 32, rngs=nnx.Rngs(0)))
    eqx_embed = eqx.nn.Embedding(64, 32, key=jax.random.key(0))
    for tree in (linen, nnx_state, eqx_embed):
        (layout,) = [lay for lay in jtree.layouts(tree) if lay is not None]
        assert layout.kind == "embedding"
        assert layout.shape == (64, 32)
        # features are the lookup's output axis; the rows (axis 0) are the channels
        # a per-row scale keeps
        assert layout.out == (1,) and layout.contract == () and layout.stacked == ()
    q = quant.uniform(eqx_embed, 8, axis=0, where="weight")
    _check_rows(q.weight, eqx_embed.weight)


def test_channel_axis_follows_the_layouts_on_a_real_model():
    model, ids = _TiedLM(), jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
    params = model.init(jax.random.key(0), ids)["params"]
    q = quant.uniform(params, 8, axis="channel")
    # q/k/v (emb, heads, hd): one scale per (head, head_dim), reducing over emb only
    _check_int8(q["query"]["kernel"], params["query"]["kernel"], (1, 4, 8), (0,))
    # attention out (heads, hd, emb): one scale per emb, reducing over heads and hd
    _check_int8(q["out"]["kernel"], params["out"]["kernel"], (1, 1, 32), (0, 1))
    _check_int8(q["Embed_0"]["embedding"], params["Embed_0"]["embedding"], (64, 1), (1,))
    f = lambda p, x: model.apply({"params": p}, x)
    want = np.asarray(jax.jit(f)(quant.dequantize(q), ids))
    np.testing.assert_allclose(np.asarray(jax.jit(quant.quantized(f))(q, ids)), want,
                               rtol=1e-5, atol=1e-5)
    w8a8 = np.asarray(jax.jit(quant.quantized(f, activations="int8-dynamic"))(q, ids))
    assert np.linalg.norm(w8a8 - want) < 0.05 * np.linalg.norm(want)
    # per (head, head_dim) is no coarser than per head_dim alone (axis=-1)
    coarse = quant.dequantize(quant.uniform(params, 8, axis=-1, where="query"))
    err = lambda d: np.linalg.norm(np.asarray(d["query"]["kernel"]) - np.asarray(
        params["query"]["kernel"]))
    assert err(quant.dequantize(q)) <= err(coarse)


def test_channel_axis_per_layer_under_scan_and_its_errors():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return x + nn.Dense(16)(x), None

    class Scanned(nn.Module):
        @nn.compact
        def __call__(self, ids):
            x = nn.Embed(32, 16)(ids)
            x, _ = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                           length=3, metadata_params={nn.PARTITION_NAME: "layers"})()(x, None)
            return x

    ids = jnp.arange(8).reshape(1, 8)
    variables = Scanned().init(jax.random.key(0), ids)
    params = nn.unbox(variables["params"])
    q = quant.uniform(variables["params"], 8, axis="channel")
    kernel = nn.unbox(q["ScanBlock_0"]["Dense_0"]["kernel"])
    # one scale per layer and output feature, reducing over each layer's inputs
    w = params["ScanBlock_0"]["Dense_0"]["kernel"]
    _check_int8(kernel, w, (3, 1, 16), (1,))
    _check_rows(nn.unbox(q["Embed_0"]["embedding"]), params["Embed_0"]["embedding"])
    with np.testing.assert_raises_regex(ValueError, "names no output channel"):
        quant.uniform(params, 8, axis="channel", where="bias")
    with np.testing.assert_raises_regex((ValueError, TypeError), "axis"):
        quant.uniform(params, 8, axis="rows")


def test_channel_axis_with_groups_splits_each_row_of_a_table():
    params = nn.Embed(16, 32).init(jax.random.key(0), jnp.zeros((1,), jnp.int32))["params"]
    q = quant.uniform(params, 4, axis="channel", group_size=8)["embedding"]
    table = np.asarray(params["embedding"], np.float32)
    assert q.scale.shape == (16, 4) and q.group_size == 8
    groups = table.reshape(16, 4, 8)
    scale = (np.abs(groups).max(axis=2) / np.float32(7)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(q.scale), scale, rtol=2.5e-7, atol=0)
    err = np.abs(np.asarray(quant.dequantize(q)) - table).reshape(16, 4, 8)
    assert np.all(err <= scale[..., None] * (0.5 + 1e-5))
