"""fake_quant: forward equals uniform quantization, straight-through gradient, jit/vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrm import quant


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("bits", [2, 8])
def test_forward_equals_uniform_dequantized(symmetric, axis, bits):
    x = jnp.asarray(np.random.default_rng(bits).standard_normal((7, 5)), jnp.float32)
    fq = quant.fake_quant(x, bits, symmetric=symmetric, axis=axis)
    ref = quant.uniform(x, bits, symmetric=symmetric, axis=axis).dequantize()
    np.testing.assert_allclose(np.asarray(fq), np.asarray(ref), rtol=1e-6, atol=1e-7)
    assert fq.dtype == x.dtype and fq.shape == x.shape


def test_straight_through_gradient_identity_inside():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 4)), jnp.float32)
    g = jnp.asarray(np.random.default_rng(1).standard_normal((6, 4)), jnp.float32)
    for sym in (True, False):
        grad = jax.grad(lambda x, sym=sym: jnp.sum(quant.fake_quant(x, 3, symmetric=sym) * g))(x)
        # With the tensor's own min/max range no entry is clipped: identity.
        np.testing.assert_allclose(np.asarray(grad), np.asarray(g))


def test_straight_through_gradient_zero_outside_fixed_range():
    x = jnp.linspace(-3.0, 3.0, 61)
    scale = 0.1  # 4 bits symmetric: levels -7..7, so |x| > 0.75 is clipped
    y, vjp = jax.vjp(lambda x: quant.fake_quant(x, 4, scale=scale), x)
    (grad,) = vjp(jnp.ones_like(x))
    xs = np.asarray(x)
    inside = np.abs(np.round(xs / scale)) <= 7
    np.testing.assert_array_equal(np.asarray(grad), inside.astype(np.float32))
    np.testing.assert_allclose(np.asarray(y), np.clip(np.round(xs / scale), -7, 7) * scale,
                               atol=1e-6)
    # Asymmetric with an explicit zero point: grid [0, 15] maps to [-0.5, 1.0].
    y, vjp = jax.vjp(
        lambda x: quant.fake_quant(x, 4, symmetric=False, scale=0.1, zero_point=5.0), x
    )
    (grad,) = vjp(jnp.ones_like(x))
    level = np.round(xs / 0.1) + 5
    np.testing.assert_array_equal(np.asarray(grad), ((level >= 0) & (level <= 15)).astype(float))
    np.testing.assert_allclose(np.asarray(y), (np.clip(level, 0, 15) - 5) * 0.1, atol=1e-6)


def test_jit_and_vmap():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4, 5)), jnp.float32)
    f = jax.jit(jax.vmap(lambda r: quant.fake_quant(r, 4, axis=1)))
    out = f(x)
    for i in range(3):
        np.testing.assert_allclose(
            np.asarray(out[i]), np.asarray(quant.fake_quant(x[i], 4, axis=1)), rtol=1e-6
        )
    g = jax.jit(jax.grad(lambda x: jnp.sum(jax.vmap(lambda r: quant.fake_quant(r, 4))(x) ** 2)))(x)
    np.testing.assert_allclose(
        np.asarray(g), 2 * np.asarray(jax.vmap(lambda r: quant.fake_quant(r, 4))(x)), rtol=1e-6
    )


def test_fake_quant_tree_for_qat():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((8, 4)), jnp.float32), "b": jnp.ones(4)}
    x = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((16, 4)), jnp.float32)

    def loss(p):
        q = quant.fake_quant_tree(p, 3)
        return jnp.mean((x @ q["w"] + q["b"] - y) ** 2)

    q = quant.fake_quant_tree(params, 3)
    assert q["b"] is params["b"]
    assert len(np.unique(np.asarray(q["w"]))) <= 7
    grads = jax.jit(jax.grad(loss))(params)
    # STE: the gradient is the float model's gradient evaluated at the quantized weights.
    expected = jax.grad(lambda w: jnp.mean((x @ w + params["b"] - y) ** 2))(q["w"])
    np.testing.assert_allclose(np.asarray(grads["w"]), np.asarray(expected), rtol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="bits"):
        quant.fake_quant(jnp.ones(3), 17)
    with pytest.raises(TypeError, match="x must be a floating"):
        quant.fake_quant(jnp.ones(3, jnp.int32), 8)
    with pytest.raises(ValueError, match="axis"):
        quant.fake_quant(jnp.ones(3), 8, axis=1)
    with pytest.raises(TypeError, match="'n'"):
        quant.fake_quant_tree({"n": jnp.ones((2, 2), jnp.int32)}, 8, where="n")
