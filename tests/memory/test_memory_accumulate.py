"""Gradient accumulation gives the full-batch gradient."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrm import memory


def init(seed=0, d=6, h=10, k=3):
    rng = np.random.default_rng(seed)
    return {"w1": rng.standard_normal((d, h), np.float32) * 0.3,
            "b1": np.zeros(h, np.float32),
            "w2": rng.standard_normal((h, k), np.float32) * 0.3}


def per_example_loss(params, batch):
    x, y = batch
    logits = jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def mean_loss(params, batch):
    return jnp.mean(per_example_loss(params, batch))


def make_batch(n, seed=1, d=6, k=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, k, n).astype(np.int32)


FULL = jax.jit(jax.value_and_grad(mean_loss))
ACCUMULATED = {k: jax.jit(memory.accumulate(jax.value_and_grad(mean_loss), k)) for k in (1, 4, 8)}


@settings(max_examples=5, deadline=None)
@given(k=st.sampled_from(sorted(ACCUMULATED)), seed=st.integers(0, 100))
def test_accumulated_gradient_equals_full_batch(k, seed):
    params, batch = init(seed), make_batch(32, seed + 1)
    full = FULL(params, batch)
    acc = ACCUMULATED[k](params, batch)
    chex.assert_trees_all_close(acc, full, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal_dtypes(acc, full)


def test_sum_reduction_for_summed_losses():
    sum_loss = lambda p, b: jnp.sum(per_example_loss(p, b))
    params, batch = init(), make_batch(12)
    full = jax.jit(jax.grad(sum_loss))(params, batch)
    acc = jax.jit(memory.accumulate(jax.grad(sum_loss), 3, reduce="sum"))(params, batch)
    chex.assert_trees_all_close(acc, full, rtol=1e-5, atol=1e-6)


def test_batch_argnums_and_bfloat16_outputs():
    def grad_fn(batch, params):  # batch first
        return jax.grad(lambda p: mean_loss(p, batch))(params)

    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), init())
    batch = make_batch(16)
    acc = jax.jit(memory.accumulate(grad_fn, 4, batch_argnums=0))(batch, params)
    full = jax.jit(grad_fn)(batch, params)
    chex.assert_trees_all_equal_dtypes(acc, full)
    chex.assert_trees_all_close(
        jax.tree.map(lambda a: a.astype(jnp.float32), acc),
        jax.tree.map(lambda a: a.astype(jnp.float32), full), rtol=5e-2, atol=5e-2,
    )


def test_accumulation_lowers_peak_memory():
    params = {"w1": jax.ShapeDtypeStruct((256, 1024), jnp.float32),
              "b1": jax.ShapeDtypeStruct((1024,), jnp.float32),
              "w2": jax.ShapeDtypeStruct((1024, 10), jnp.float32)}
    batch = (jax.ShapeDtypeStruct((512, 256), jnp.float32),
             jax.ShapeDtypeStruct((512,), jnp.int32))
    grad_fn = jax.grad(mean_loss)
    full = memory.report(grad_fn, params, batch, residuals=False)
    acc = memory.report(memory.accumulate(grad_fn, 8), params, batch, residuals=False)
    assert acc.temp_bytes < full.temp_bytes / 2


def test_errors():
    params, batch = init(), make_batch(10)
    with pytest.raises(ValueError, match="micro_batches"):
        memory.accumulate(jax.grad(mean_loss), 0)
    with pytest.raises(ValueError, match="reduce"):
        memory.accumulate(jax.grad(mean_loss), 2, reduce="max")
    # wrong types are TypeErrors, as everywhere in jaxrm
    with pytest.raises(TypeError, match="micro_batches must be an int"):
        memory.accumulate(jax.grad(mean_loss), 2.0)
    with pytest.raises(TypeError, match="batch_argnums"):
        memory.accumulate(jax.grad(mean_loss), 2, batch_argnums="1")
    with pytest.raises(TypeError, match="reduce"):
        memory.accumulate(jax.grad(mean_loss), 2, reduce=None)
    with pytest.raises(TypeError, match="grad_fn"):
        memory.accumulate("f", 2)
    with pytest.raises(ValueError, match=r"leaf '0' has leading size 10, not divisible"):
        memory.accumulate(jax.grad(mean_loss), 4)(params, batch)
    with pytest.raises(TypeError, match="dtype int32"):
        memory.accumulate(lambda p, b: b[1], 2)(params, batch)
    with pytest.raises(ValueError, match="no argument 5"):
        memory.accumulate(jax.grad(mean_loss), 2, batch_argnums=5)(params, batch)
