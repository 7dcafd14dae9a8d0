"""Remat policies against JAX's own saved-residual listing."""

import contextlib
import io

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.ad_checkpoint import checkpoint_name, print_saved_residuals

from jaxrm import memory


def mlp(params, x):
    for w1, w2 in params:
        h = checkpoint_name(jnp.tanh(x @ w1), "hidden")
        x = x + h @ w2
    return jnp.sum(x**2)


def make_params(layers=3, d=16, hidden=32, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((d, hidden), np.float32) * 0.1,
         rng.standard_normal((hidden, d), np.float32) * 0.1)
        for _ in range(layers)
    ]


def jax_residual_lines(fn, *args):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_saved_residuals(fn, *args)
    return [ln for ln in buf.getvalue().splitlines() if ln.strip()]


def vjp_closure_bytes(fn, *args):
    _, vjp = jax.eval_shape(lambda *a: jax.vjp(fn, *a), *args)
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(vjp))


POLICY_NAMES = ["none", "full", "dots", "dots_no_batch", "names:hidden"]


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_residuals_match_print_saved_residuals(name):
    params, x = make_params(), jnp.ones((8, 16))
    fn = memory.remat(mlp, name)
    ours = memory.residuals(fn, params, x)
    lines = jax_residual_lines(fn, params, x)
    assert len(ours) == len(lines)
    # the same shapes in the same order, and the same argument / intermediate split
    for r, line in zip(ours, lines):
        assert line.startswith(f"f32[{','.join(map(str, r.shape))}]"), (r, line)
        assert (r.kind == "argument") == ("from the argument" in line), (r, line)
    assert memory.residual_bytes(fn, params, x, include_arguments=True) == vjp_closure_bytes(
        fn, params, x
    )


def test_policies_order_and_exact_bytes():
    layers, b, d, hidden = 3, 8, 16, 32
    params, x = make_params(layers, d, hidden), jnp.ones((b, d))
    got = {n: memory.residual_bytes(memory.remat(mlp, n), params, x) for n in POLICY_NAMES}
    assert got["full"] == 0  # only the arguments are kept
    # "names:hidden" keeps exactly one (b, hidden) float32 per layer
    assert got["names:hidden"] == layers * b * hidden * 4
    # dots keep both matmul outputs per layer: (b, hidden) and (b, d)
    assert got["dots"] == layers * (b * hidden + b * d) * 4
    assert got["dots_no_batch"] == got["dots"]  # no batched matmuls here
    assert got["none"] > got["dots"] > got["names:hidden"] > got["full"]
    names = [r.name for r in memory.residuals(memory.remat(mlp, "names:hidden"), params, x)
             if r.kind == "intermediate"]
    assert names == ["hidden"] * layers


def test_dots_no_batch_drops_batched_matmuls():
    def attn(q, k):
        s = jnp.einsum("bqd,bkd->bqk", q, k)  # a batched matmul
        return jnp.sum(jax.nn.softmax(s) @ k)

    q = k = jnp.ones((2, 4, 8))
    dots = memory.residuals(memory.remat(attn, "dots"), q, k)
    no_batch = memory.residuals(memory.remat(attn, "dots_no_batch"), q, k)
    assert sum(r.kind == "intermediate" for r in dots) > sum(
        r.kind == "intermediate" for r in no_batch
    )
    assert len(no_batch) == len(jax_residual_lines(memory.remat(attn, "dots_no_batch"), q, k))


def test_remat_keeps_values_and_gradients():
    params, x = make_params(layers=2), jnp.linspace(-1, 1, 8 * 16).reshape(8, 16)
    ref = jax.jit(jax.value_and_grad(mlp))(params, x)
    for name in POLICY_NAMES:
        got = jax.jit(jax.value_and_grad(memory.remat(mlp, name)))(params, x)
        chex.assert_trees_all_close(got, ref, rtol=1e-6, atol=1e-6)
    assert memory.remat(mlp, "none") is mlp


def test_remat_in_scan_with_prevent_cse_false():
    params = make_params(layers=4)
    stacked = jax.tree.map(lambda *a: np.stack(a), *params)
    x = jnp.ones((8, 16))

    def body(x, w):
        w1, w2 = w
        return x + jnp.tanh(x @ w1) @ w2, None

    def scanned(policy):
        step = memory.remat(body, policy, prevent_cse=False)
        return lambda p, x: jnp.sum(jax.lax.scan(step, x, p)[0] ** 2)

    ref = jax.jit(jax.grad(scanned("none")))(stacked, x)
    chex.assert_trees_all_close(jax.jit(jax.grad(scanned("full")))(stacked, x), ref, rtol=1e-6)
    assert memory.residual_bytes(scanned("full"), stacked, x) < memory.residual_bytes(
        scanned("none"), stacked, x
    )


def test_static_argnums():
    def f(x, n):
        for _ in range(n):
            x = jnp.sin(x)
        return x.sum()

    g = memory.remat(f, "full", static_argnums=1)
    np.testing.assert_allclose(jax.grad(g)(jnp.ones(3), 2), jax.grad(f)(jnp.ones(3), 2))


def test_flax_linen_and_nnx_equivalents():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x + nn.Dense(16)(jnp.tanh(nn.Dense(32)(x)))

    x = jnp.ones((4, 16))
    params = jax.eval_shape(Block().init, jax.random.key(0), x)
    loss = lambda p, x: jnp.sum(Block().apply(p, x) ** 2)
    linen_remat = lambda p, x: jnp.sum(
        nn.remat(Block, policy=jax.checkpoint_policies.nothing_saveable)().apply(p, x) ** 2
    )
    block = memory.remat(lambda p, x: Block().apply(p, x), "full")
    ours = lambda p, x: jnp.sum(block(p, x) ** 2)
    assert memory.residual_bytes(ours, params, x) == memory.residual_bytes(linen_remat, params, x)
    assert memory.residual_bytes(ours, params, x) < memory.residual_bytes(loss, params, x)

    graphdef, state = nnx.split(nnx.eval_shape(lambda: nnx.Linear(16, 16, rngs=nnx.Rngs(0))))

    def nnx_loss(state, x):
        return jnp.sum(jnp.tanh(nnx.merge(graphdef, state)(x)) ** 2)

    r = memory.residuals(memory.remat(nnx_loss, "dots"), state, x)
    assert {p.source for p in r if p.kind == "argument"} >= {"argument 0/kernel"}


def test_bad_policies():
    with pytest.raises(ValueError, match="not a known policy"):
        memory.remat(mlp, "everything")
    with pytest.raises(ValueError, match="names no"):
        memory.remat(mlp, "names:")
    with pytest.raises(TypeError, match="policy"):
        memory.remat(mlp, 3)
    with pytest.raises(TypeError, match="fn"):
        memory.remat("mlp")
    assert set(memory.POLICIES) >= {"none", "full", "dots", "dots_no_batch", "offload_dots"}
    with pytest.raises(TypeError):
        memory.POLICIES["x"] = None  # read-only


@settings(max_examples=8, deadline=None)
@given(layers=st.integers(1, 4), batch=st.integers(1, 6))
def test_names_policy_bytes_property(layers, batch):
    params, x = make_params(layers, 8, 12), jnp.ones((batch, 8))
    got = memory.residual_bytes(memory.remat(mlp, "names:hidden"), params, x)
    assert got == layers * batch * 12 * 4
