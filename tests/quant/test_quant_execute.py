"""quant.quantized: compressed execution on Linen, NNX and Equinox against references."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from jaxrm import quant

WEIGHTS = r"kernel$|embedding$|/o$"


class _Attention(nn.Module):
    """Token embedding, attention with head axes, MLP; DenseGeneral and einsum kernels."""

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(40, 16)(ids)
        q = nn.DenseGeneral((2, 8), name="q")(x)
        k = nn.DenseGeneral((2, 8), name="k")(x)
        v = nn.DenseGeneral((2, 8), name="v")(x)
        a = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8.0), axis=-1)
        o = self.param("o", nn.initializers.normal(0.2), (2, 8, 16))
        x = x + jnp.einsum("bhqk,bkhd,hde->bqe", a, v, o)
        x = x + nn.Dense(16)(nn.gelu(nn.Dense(32)(nn.LayerNorm()(x))))
        return nn.Dense(5)(x)


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return x + nn.Dense(16)(nn.relu(nn.Dense(24)(x))), None


class _Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
        blocks = nn.scan(
            _Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=3,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = blocks()(x, None)
        return x


class _ConvBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.Conv(8, (3, 3), feature_group_count=8)(nn.relu(x))  # depthwise
        return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


def _ids():
    return jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 6)))


@pytest.fixture(scope="module")
def attention():
    model = _Attention()
    ids = _ids()
    params = model.init(jax.random.key(0), ids)["params"]
    return model, params, ids


@pytest.mark.parametrize(
    "kw",
    [
        dict(bits=8, axis=-1),
        pytest.param(dict(bits=4, symmetric=False, pack=True), marks=pytest.mark.slow),
    ],
)
def test_weight_only_equals_dequantize_then_apply(attention, kw):
    model, params, ids = attention
    q = quant.uniform(params, where=WEIGHTS, **kw)
    f = lambda p, x: model.apply({"params": p}, x)
    out = jax.jit(quant.quantized(f))(q, ids)
    ref = jax.jit(f)(quant.dequantize(q), ids)
    # Each op sees exactly the dequantized weight (checked op by op below); the
    # whole model agrees to float32 rounding, as XLA may fuse the ops around
    # an embedding gather differently.
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-6)
    take = lambda p, x: jnp.take(p["Embed_0"]["embedding"], x, axis=0)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(quant.quantized(take))(q, ids)),
        np.asarray(take(quant.dequantize(q), ids)),
    )


@pytest.mark.slow
def test_codebook_and_group_wise_weights(attention):
    model, params, ids = attention
    f = lambda p, x: model.apply({"params": p}, x)
    for q in (
        quant.kmeans(params, 3, where=WEIGHTS),
        quant.uniform(params, 4, axis=-1, group_size=8, pack=True, where=r"Dense_\d/kernel$"),
    ):
        out = jax.jit(quant.quantized(f))(q, ids)
        np.testing.assert_allclose(
            np.asarray(out),
            np.asarray(jax.jit(f)(quant.dequantize(q), ids)),
            rtol=1e-5,
            atol=1e-6,
        )


def test_compiled_arguments_stay_integer(attention):
    model, params, ids = attention
    f = lambda p, x: model.apply({"params": p}, x)
    q = quant.uniform(params, 8, axis=-1, where=WEIGHTS)
    text = jax.jit(quant.quantized(f)).lower(q, ids).as_text()
    assert "tensor<40x16xi8>" in text and "tensor<40x16xf32>" not in text.split("{")[0]


def _int8_reference(x, q):
    """Numpy int8 x int8 -> int64 matmul, per-row activation range, per-column weight scale."""
    x = np.asarray(x, np.float64)
    amax = np.max(np.abs(x), axis=-1, keepdims=True)
    sx = np.where(amax > 0, amax.astype(np.float32) / np.float32(127), 1.0)
    xq = np.clip(np.round(x / sx), -127, 127).astype(np.int64)
    y = xq @ np.asarray(q.integers(), np.int64)
    return y * sx * np.asarray(q.scale, np.float64)


def test_int8_matmul_matches_numpy_integer_reference():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 12)).astype(np.float32)
    x = (rng.standard_normal((5, 32)) * 3).astype(np.float32)
    x[2] = 0.0  # an all-zero row takes scale 1
    for bits, pack in ((8, False), (4, True)):
        q = quant.uniform({"w": w}, bits, axis=-1, pack=pack, where="w")
        f = quant.quantized(lambda p, x: x @ p["w"], activations="int8-dynamic")
        out = jax.jit(f)(q, x)
        np.testing.assert_allclose(
            np.asarray(out), _int8_reference(x, q["w"]), rtol=2e-6, atol=1e-6
        )
        jaxpr = str(jax.make_jaxpr(f)(q, x))
        assert "i8[5,32]" in jaxpr and "preferred_element_type=int32" in jaxpr
    # the weight on the left (Equinox's weight @ x): same numbers transposed
    q = quant.uniform({"w": w.T.copy()}, 8, axis=0, where="w")
    f = quant.quantized(lambda p, x: p["w"] @ x, activations="int8-dynamic")
    out = jax.jit(f)(q, x.T)
    ref = _int8_reference(x, quant.uniform({"w": w}, 8, axis=-1, where="w")["w"])
    np.testing.assert_allclose(np.asarray(out).T, ref, rtol=2e-6, atol=1e-6)


@pytest.mark.slow
def test_w8a8_close_to_float_on_attention_and_convbn(attention):
    model, params, ids = attention
    f = lambda p, x: model.apply({"params": p}, x)
    q = quant.uniform(params, 8, axis=-1, where=WEIGHTS)
    ref = f(quant.dequantize(q), ids)
    out = jax.jit(quant.quantized(f, activations="int8-dynamic"))(q, ids)
    assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 2e-2
    conv = _ConvBN()
    img = jnp.asarray(np.random.default_rng(2).standard_normal((2, 8, 8, 3)), jnp.float32)
    variables = conv.init(jax.random.key(1), img)
    qv = {**variables, "params": quant.uniform(variables["params"], 8, axis=-1, where="kernel")}
    g = lambda v, x: conv.apply(v, x)
    ref = g(quant.dequantize(qv), img)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(quant.quantized(g))(qv, img)),
        np.asarray(jax.jit(g)(quant.dequantize(qv), img)),
    )
    out = jax.jit(quant.quantized(g, activations="int8-dynamic"))(qv, img)
    assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 2e-2


def test_scanned_blocks_per_slice():
    model = _Scanned()
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 16)), jnp.float32)
    params = model.init(jax.random.key(0), x)["params"]
    q = quant.uniform(params, 8, axis=-1, stacked=0, where="kernel")
    (name,) = params
    kernel = params[name]["Dense_0"]["kernel"]
    assert q[name]["Dense_0"]["kernel"].scale.shape == (3, 1, kernel.shape[-1])
    f = lambda p, x: model.apply({"params": p}, x)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(quant.quantized(f))(q, x)),
        np.asarray(jax.jit(f)(quant.dequantize(q), x)),
    )
    ranges = quant.calibrate_activations(f, q, [x, 2 * x])
    assert ranges[f"{name}/Dense_0/kernel"].shape == (3,)  # one range per layer
    # Dense_1 (the inner Dense, built second) reads the block input: layer 0 sees x
    np.testing.assert_allclose(
        float(ranges[f"{name}/Dense_1/kernel"][0]), 2 * float(jnp.max(jnp.abs(x))), rtol=1e-6
    )
    ref = f(quant.dequantize(q), x)
    for acts in ("int8-dynamic", ranges):
        out = jax.jit(quant.quantized(f, activations=acts))(q, x)
        assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 2e-2


def test_nnx_and_equinox():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(8, 16, rngs=rngs)
            self.b = nnx.Linear(16, 4, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    qstate = quant.uniform(state, 8, axis=-1, where="kernel")
    f = lambda s, x: nnx.merge(graphdef, s)(x)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((3, 8)), jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(quant.quantized(f))(qstate, x)),
        np.asarray(jax.jit(f)(quant.dequantize(qstate), x)),
    )
    mlp = eqx.nn.MLP(8, 4, 16, 2, key=jax.random.key(0))
    qmlp = quant.uniform(mlp, 8, axis=0, where=r"weight$")
    g = lambda m, x: jax.vmap(m)(x)
    np.testing.assert_array_equal(
        np.asarray(eqx.filter_jit(quant.quantized(g))(qmlp, x)),
        np.asarray(eqx.filter_jit(g)(quant.dequantize(qmlp), x)),
    )


def test_masked_weights_stay_zero_and_grad_vmap():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 6)).astype(np.float32)
    keep = rng.random(w.shape) > 0.5
    q = quant.uniform(
        {"w": w, "b": np.zeros(6, np.float32)}, 8, masks={"w": keep, "b": None}, where="w"
    )
    eye = jnp.eye(6)
    for acts in (None, "int8-dynamic"):
        seen = jax.jit(quant.quantized(lambda p, x: x @ p["w"], activations=acts))(q, eye)
        assert np.all(np.asarray(seen)[~keep] == 0.0)
    f = quant.quantized(lambda p, x: jnp.sum(jnp.tanh(x @ p["w"] + p["b"])))
    x = jnp.asarray(rng.standard_normal((3, 6)), jnp.float32)
    g = jax.grad(lambda b: f({**q, "b": b}, x))(q["b"])
    ref = jax.grad(lambda b: jnp.sum(jnp.tanh(x @ q["w"].dequantize() + b)))(q["b"])
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=1e-6)
    gs = jax.grad(lambda s: f({**q, "w": q["w"].replace(scale=s)}, x))(q["w"].scale)
    assert gs.shape == q["w"].scale.shape and np.all(np.isfinite(gs))
    per = jax.vmap(lambda r: f(q, r[None]))(x)
    np.testing.assert_allclose(np.asarray(per).sum(), float(f(q, x)), rtol=1e-5)


def test_bad_input():
    w = np.random.default_rng(6).standard_normal((8, 4)).astype(np.float32)
    q = quant.uniform({"layer": {"w": w}}, 8, axis=-1, where="w")
    x = jnp.ones((2, 5))
    dims = (((1,), (0,)), ((), ()))
    with pytest.raises(ValueError, match=r"'layer/w' of shape \(8, 4\) does not fit"):
        quant.quantized(lambda p, x: jax.lax.dot_general(x, p["layer"]["w"], dims))(q, x)
    with pytest.raises(TypeError, match=r"'layer/w' meets `sin`"):
        quant.quantized(lambda p: jnp.sin(p["layer"]["w"]))(q)
    out = quant.quantized(lambda p: jnp.sin(p["layer"]["w"]), unsupported="dequantize")(q)
    np.testing.assert_array_equal(
        np.asarray(out), np.asarray(jnp.sin(q["layer"]["w"].dequantize()))
    )
    x = jnp.ones((2, 8))
    for bad, match in (
        (quant.uniform({"w": w}, 12, where="w"), "12-bit"),
    ):
        with pytest.raises(ValueError, match=match):
            quant.quantized(lambda p, x: x @ p["w"], activations="int8-dynamic")(bad, x)
    # scales varying along both contracted axes of one op
    every = {"w": q["layer"]["w"].replace(scale=jnp.ones((8, 4)), group_size=1)}
    with pytest.raises(ValueError, match="several contracted"):
        quant.quantized(lambda p, y: jnp.einsum("ij,ij->", p["w"], y),
                        activations="int8-dynamic")(every, jnp.ones((8, 4)))
    broken = {"w": q["layer"]["w"].replace(scale=jnp.ones((3, 4)))}
    with pytest.raises(ValueError, match="scale of shape"):
        quant.quantized(lambda p, x: x @ p["w"])(broken, x)
    with pytest.raises(ValueError, match="activations"):
        quant.quantized(lambda p: p, activations="int4")
    with pytest.raises(ValueError, match="unsupported"):
        quant.quantized(lambda p: p, unsupported="ignore")
    with pytest.raises(ValueError, match="tile_bytes"):
        quant.quantized(lambda p: p, tile_bytes=0)
    with pytest.raises(ValueError, match="no calibrated range"):
        quant.quantized(lambda p, x: x @ p["w"], activations={"v": jnp.float32(1)})(
            {"w": q["layer"]["w"]}, x
        )


def test_jrm_file_runs_compressed(tmp_path):
    from jaxrm import coding

    class Net(nn.Module):
        @nn.compact
        def __call__(self, ids):
            return nn.Dense(5)(nn.relu(nn.Dense(32)(nn.Embed(50, 16)(ids))))

    model, ids = Net(), jnp.arange(12).reshape(2, 6)
    params = model.init(jax.random.key(0), ids)["params"]
    rng = np.random.default_rng(0)
    masks = jax.tree.map(lambda x: (rng.random(x.shape) > 0.3) if x.ndim == 2 else None, params)
    q = quant.uniform(params, 4, axis=[("embedding$", 0), (".*", -1)], group_size=8,
                      pack=True, masks=masks)
    coding.save(tmp_path / "m.jrm", q)
    back = coding.load(tmp_path / "m.jrm", like=q, dequantize=False)
    assert jax.tree.structure(back) == jax.tree.structure(q)
    assert back["Embed_0"]["embedding"].packed and back["Embed_0"]["embedding"].mask is not None
    f = lambda p, x: model.apply({"params": p}, x)
    np.testing.assert_array_equal(np.asarray(jax.jit(quant.quantized(f))(back, ids)),
                                  np.asarray(jax.jit(quant.quantized(f))(q, ids)))


def _grouped_reference(x, q, sx=None):
    """Numpy int8 x int8 -> int64 per group of the contraction, with zero points:
    ``sum_g sx * sw[g] * (xq[:, g] @ (w[g] - z[g]))``, masked entries 0; the
    activation step ``sx`` per row (max |x| / 127) unless given."""
    x = np.asarray(x, np.float64)
    if sx is None:
        amax = np.max(np.abs(x), axis=-1, keepdims=True)
        sx = np.where(amax > 0, amax.astype(np.float32) / np.float32(127), 1.0)
    xq = np.clip(np.round(x / sx), -127, 127).astype(np.int64)
    k = x.shape[-1]
    scale = np.broadcast_to(np.asarray(q.scale, np.float64), (np.shape(q.scale)[0], q.shape[1]))
    zp = np.broadcast_to(np.asarray(q.zero_point, np.float64), scale.shape).astype(np.int64)
    w = np.asarray(q.integers(), np.int64)
    keep = np.ones(w.shape, bool) if q.mask is None else np.asarray(q.mask)
    size = q.group_size or -(-k // scale.shape[0])
    y = np.zeros((x.shape[0], w.shape[1]))
    for g in range(scale.shape[0]):
        rows = slice(g * size, min((g + 1) * size, k))
        centred = np.where(keep[rows], w[rows] - zp[g], 0)
        y += (xq[:, rows] @ centred) * scale[g]
    return y * sx


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits, group, pack", [(8, None, False), (8, 16, False), (4, 12, True)])
def test_integer_path_asymmetric_and_group_wise(symmetric, bits, group, pack):
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((40, 6)) + 0.7).astype(np.float32)  # off-centre: zero points
    keep = rng.random(w.shape) > 0.3
    x = (rng.standard_normal((5, 40)) * 2).astype(np.float32)
    x[1] = 0.0
    q = quant.uniform({"w": w}, bits, symmetric=symmetric, axis=-1, group_size=group,
                      pack=pack, masks={"w": keep}, where="w")["w"]
    assert q.symmetric == symmetric and (group is None) == (q.scale.shape[0] == 1)
    f = quant.quantized(lambda p, x: x @ p["w"], activations="int8-dynamic")
    out = jax.jit(f)({"w": q}, x)
    ref = _grouped_reference(x, q)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    jaxpr = str(jax.make_jaxpr(f)({"w": q}, x))
    assert "preferred_element_type=int32" in jaxpr and "i8[5," in jaxpr
    # masked entries contribute exactly nothing: the one-hot rows give w's rows
    seen = jax.jit(f)({"w": q}, np.eye(40, dtype=np.float32) * 3)
    assert np.all(np.asarray(seen)[~keep] == 0.0)
    # the weight on the left, and under vmap
    g = quant.quantized(lambda p, x: p["w"].T @ x.T, activations="int8-dynamic")
    np.testing.assert_allclose(np.asarray(jax.jit(g)({"w": q}, x)).T, np.asarray(out),
                               rtol=1e-6, atol=1e-6)
    per = jax.vmap(lambda r: f({"w": q}, r[None])[0])(x)
    np.testing.assert_allclose(np.asarray(per), np.asarray(out), rtol=1e-6, atol=1e-6)


def test_integer_path_group_wise_attention_kernel_and_conv():
    rng = np.random.default_rng(8)
    # attention output kernel (heads, head_dim, emb) contracted on (heads, head_dim)
    o = rng.standard_normal((2, 8, 5)).astype(np.float32)
    v = rng.standard_normal((3, 2, 8)).astype(np.float32)
    q = quant.uniform({"o": o}, 8, symmetric=False, axis=-1, group_size=4, where="o")
    assert q["o"].scale.shape == (1, 2, 5)  # groups of 4 along head_dim
    f = quant.quantized(lambda p, v: jnp.einsum("bhd,hde->be", v, p["o"]),
                        activations="int8-dynamic")
    # both heads share the scales of a head_dim group: groups of the flattened (16,) axis
    spread = lambda a: jnp.broadcast_to(a, (2, 2, 5)).reshape(4, 5)
    flat = q["o"].replace(values=q["o"].values.reshape(16, 5), scale=spread(q["o"].scale),
                          zero_point=spread(q["o"].zero_point))
    np.testing.assert_allclose(np.asarray(jax.jit(f)(q, v)),
                               _grouped_reference(v.reshape(3, 16), flat), rtol=1e-5, atol=1e-5)
    # convolution: asymmetric, groups of input features; against the same numbers
    # as a matmul on im2col patches (a 1x1 convolution is a matmul per pixel)
    k = (rng.standard_normal((1, 1, 12, 4)) + 0.5).astype(np.float32)
    img = rng.standard_normal((2, 3, 3, 12)).astype(np.float32)
    for kw in (dict(symmetric=False), dict(symmetric=False, group_size=4)):
        qk = quant.uniform({"k": k}, 8, axis=-1, where="k", **kw)
        conv = quant.quantized(lambda p, x: jax.lax.conv_general_dilated(
            x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
            activations="int8-dynamic")
        out = np.asarray(jax.jit(conv)(qk, img))
        flat = qk["k"].replace(values=qk["k"].values.reshape(12, 4),
                               scale=qk["k"].scale.reshape(-1, 4),
                               zero_point=qk["k"].zero_point.reshape(-1, 4))
        for n in range(2):  # the activation range is per example
            sx = np.abs(img[n]).max().astype(np.float32) / np.float32(127)
            ref = _grouped_reference(img[n].reshape(9, 12), flat, np.float64(sx))
            np.testing.assert_allclose(out[n].reshape(9, 4), ref, rtol=1e-5, atol=1e-4)
