"""Weight-only ops dequantized tile by tile (quant.quantized's tile_bytes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxrm import quant
from tests.quant.test_quant_execute import _Scanned


class _Heads(nn.Module):
    """Embedding, attention projections with head axes (DenseGeneral), a head."""

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(30, 16)(ids)
        q = nn.DenseGeneral((4, 6), name="q")(x)
        o = nn.DenseGeneral(16, axis=(-2, -1), name="o")(jnp.tanh(q))
        return nn.Dense(30, name="head")(x + o)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


_VARIANTS = {
    "int8": lambda p: quant.uniform(p, 8, axis=[("embedding$", 0), (".*", -1)],
                                    where="kernel|embedding"),
    "int4-asym": lambda p: quant.uniform(p, 4, axis=-1, symmetric=False, pack=True,
                                         where="kernel"),
    "int4-g4": lambda p: quant.uniform(p, 4, axis=-1, group_size=4, pack=True, where="kernel"),
    "codebook": lambda p: quant.kmeans(p, 3, where="kernel"),
}


@pytest.mark.parametrize(
    "variant", ["int8", *(pytest.param(v, marks=pytest.mark.slow) for v in list(_VARIANTS)[1:])]
)
def test_tiled_matches_dequantize_then_apply_on_attention(variant):
    model = _Heads()
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 30, (2, 5)))
    params = model.init(jax.random.key(0), ids)["params"]
    f = lambda p, x: model.apply({"params": p}, x)
    q = _VARIANTS[variant](params)
    ref = jax.jit(f)(quant.dequantize(q), ids)
    for tile in (64, 200):  # 1 and 3 output entries of the head per tile
        _close(jax.jit(quant.quantized(f, tile_bytes=tile))(q, ids), ref)


def test_tiles_on_both_sides_masks_and_conv():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((12, 10)).astype(np.float32)
    keep = rng.random(w.shape) > 0.4
    q = quant.uniform({"w": w}, 8, axis=-1, masks={"w": keep}, where="w")
    x = jnp.asarray(rng.standard_normal((3, 12)), jnp.float32)
    right = quant.quantized(lambda p, x: x @ p["w"], tile_bytes=96)  # 2 columns a tile
    left = quant.quantized(lambda p, x: p["w"].T @ x.T, tile_bytes=96)
    ref = x @ q["w"].dequantize()
    _close(jax.jit(right)(q, x), ref)
    _close(jax.jit(left)(q, x), ref.T)
    eye = jax.jit(right)(q, jnp.eye(12))
    assert np.all(np.asarray(eye)[~keep] == 0.0)  # masked entries stay exactly 0
    k = rng.standard_normal((3, 3, 4, 6)).astype(np.float32)
    qk = quant.uniform({"k": k}, 8, axis=-1, where="k")
    img = jnp.asarray(rng.standard_normal((2, 7, 7, 4)), jnp.float32)
    conv = lambda p, x: jax.lax.conv_general_dilated(
        x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    _close(jax.jit(quant.quantized(conv, tile_bytes=3 * 3 * 4 * 4 * 2))(qk, img),
           conv(quant.dequantize(qk), img))


def test_tiled_scan_grad_vmap_and_compiled_buffers():
    model = _Scanned()
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 16)), jnp.float32)
    params = model.init(jax.random.key(0), x)["params"]
    q = quant.uniform(params, 8, axis=-1, stacked=0, where="kernel")
    f = lambda p, x: model.apply({"params": p}, x)
    g = quant.quantized(f, tile_bytes=16 * 4 * 4)
    _close(jax.jit(g)(q, x), f(quant.dequantize(q), x))
    (name,) = q
    loss = lambda s, fn: jnp.sum(fn({name: {**q[name], "Dense_1": {
        **q[name]["Dense_1"], "kernel": q[name]["Dense_1"]["kernel"].replace(scale=s)}}}, x) ** 2)
    s = q[name]["Dense_1"]["kernel"].scale
    ga, gb = jax.grad(loss)(s, g), jax.grad(loss)(s, lambda p, x: f(quant.dequantize(p), x))
    assert float(jnp.linalg.norm(ga - gb) / jnp.linalg.norm(gb)) < 1e-5
    _close(jax.vmap(lambda r: g(q, r[None])[0])(x), g(q, x))
    # one (256, 512) weight in 64 KiB tiles: no float copy of it in the program
    w = np.random.default_rng(3).standard_normal((256, 512)).astype(np.float32)
    qw = quant.uniform({"w": w}, 8, axis=-1, where="w")
    mm = lambda p, x: x @ p["w"]
    text = jax.jit(quant.quantized(mm, tile_bytes=1 << 16)).lower(qw, jnp.ones((2, 256))).compile()
    assert "f32[256,512]" not in text.as_text() and "f32[256,64]" in text.as_text()
    assert "f32[256,512]" in jax.jit(quant.quantized(mm, tile_bytes=None)).lower(
        qw, jnp.ones((2, 256))).compile().as_text()
