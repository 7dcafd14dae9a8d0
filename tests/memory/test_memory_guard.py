"""The OOM guard: a simulated device limit from the compiled report, a raised
RESOURCE_EXHAUSTED, the remembered split, and the same parameters as the unsplit step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrm import memory
from tests.memory._memory_mlp import init_mlp, make_batch, mlp_loss

OPT = optax.adam(1e-2)


def make_step(grad):
    def step(params, opt_state, batch):
        loss, grads = grad(params, batch)
        updates, opt_state = OPT.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


GRAD = jax.value_and_grad(mlp_loss)
SIZES = [32, 256, 256, 8]


def _setup(n=64):
    params = jax.tree.map(jnp.asarray, init_mlp(0, SIZES))
    return params, OPT.init(params), tuple(map(jnp.asarray, make_batch(1, n, 32, 8)))


def _total(k, args):
    grad = GRAD if k == 1 else memory.accumulate(GRAD, k)
    return memory.report(jax.jit(make_step(grad)), *args, residuals=False).total_bytes


def test_simulated_budget_splits_and_matches_the_unsplit_step():
    params, opt_state, batch = _setup()
    args = (params, opt_state, batch)
    t1, t2, t4 = (_total(k, args) for k in (1, 2, 4))
    assert t1 > t2 > t4  # activations shrink with the micro-batch
    calls = []
    guarded = memory.oom_guard(lambda g: calls.append(g) or make_step(g), GRAD,
                               budget_bytes=(t2 + t4) / 2)
    p, s, loss = guarded(*args)
    assert guarded.micro_batches == 4 and [k for k, _ in guarded.history] == [1, 2]
    assert "simulated" in guarded.history[0][1]
    ref = jax.jit(make_step(GRAD))(*args)
    # Adam's first step is lr * g / (|g| + eps): where g is ~eps, round-off in g shows
    chex.assert_trees_all_close((p, s, loss), ref, rtol=1e-5, atol=1e-5)
    # the gradients themselves agree to round-off
    chex.assert_trees_all_close(jax.jit(memory.accumulate(GRAD, 4))(params, batch),
                                jax.jit(GRAD)(params, batch), rtol=1e-5, atol=1e-7)
    # the working split is remembered: the next steps compile nothing new and agree
    n_builds = len(calls)
    for _ in range(3):
        p, s, loss = guarded(p, s, batch)
        ref = jax.jit(make_step(GRAD))(*ref[:2], batch)
        # Adam divides by sqrt(v): round-off of near-zero gradients grows a little per step
        chex.assert_trees_all_close((p, s, loss), ref, rtol=1e-4, atol=1e-5)
    assert len(calls) == n_builds and guarded.micro_batches == 4


def test_run_time_resource_exhausted_is_caught():
    params, opt_state, batch = _setup(16)

    class Exhausted(RuntimeError):
        pass

    def flaky_make_step(grad):
        step = make_step(grad)
        if grad is GRAD:  # the unsplit step "runs out of memory" on the device
            def failing(*a):
                jax.debug.callback(lambda: (_ for _ in ()).throw(
                    Exhausted("RESOURCE_EXHAUSTED: Out of memory allocating 123 bytes")))
                return step(*a)

            return failing
        return step

    guarded = memory.oom_guard(flaky_make_step, GRAD)
    p, _, _ = guarded(params, opt_state, batch)
    assert guarded.micro_batches == 2
    ref = jax.jit(make_step(GRAD))(params, opt_state, batch)[0]
    chex.assert_trees_all_close(p, ref, rtol=1e-5, atol=1e-6)


def test_no_split_fits_and_other_errors_pass_through():
    params, opt_state, batch = _setup(12)
    guarded = memory.oom_guard(make_step, GRAD, budget_bytes=1000)
    with pytest.raises(RuntimeError, match="does not split into 8 micro-batches"):
        guarded(params, opt_state, batch)
    capped = memory.oom_guard(make_step, GRAD, budget_bytes=1000, max_micro_batches=2)
    with pytest.raises(RuntimeError, match="max_micro_batches=2"):
        capped(params, opt_state, batch)

    def broken(grad):
        def step(*a):
            raise KeyError("not memory")

        return step

    with pytest.raises(KeyError):
        memory.oom_guard(broken, GRAD)(params, opt_state, batch)
    with pytest.raises(TypeError, match="make_step"):
        memory.oom_guard(None, GRAD)
    with pytest.raises(TypeError, match="max_micro_batches"):
        memory.oom_guard(make_step, GRAD, max_micro_batches=2.0)
    with pytest.raises(ValueError, match="budget_bytes"):
        memory.oom_guard(make_step, GRAD, budget_bytes=0)
    assert np.isfinite(float(memory.oom_guard(make_step, GRAD)(params, opt_state, batch)[2]))
