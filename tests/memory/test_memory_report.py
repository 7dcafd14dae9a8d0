"""Compiled memory reports, fitting a batch or a policy to a budget."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrm import memory

F32 = 4


def test_report_of_a_matmul_has_the_known_sizes():
    a = jax.ShapeDtypeStruct((32, 64), jnp.float32)
    b = jax.ShapeDtypeStruct((64, 16), jnp.float32)
    r = memory.report(lambda a, b: a @ b, a, b)
    assert r.argument_bytes == (32 * 64 + 64 * 16) * F32
    assert r.output_bytes == 32 * 16 * F32
    assert r.total_bytes == (
        r.argument_bytes + r.output_bytes + r.temp_bytes - r.alias_bytes + r.code_bytes
    )
    assert r.residual_bytes == 0  # a @ b keeps only its arguments
    assert r.fits(r.total_bytes) and not r.fits(r.total_bytes - 1)
    # concrete arrays give the same report as their shapes
    concrete = memory.report(lambda a, b: a @ b, jnp.ones((32, 64)), jnp.ones((64, 16)))
    assert concrete == r


def test_report_counts_donated_buffers_once():
    x = jax.ShapeDtypeStruct((256, 256), jnp.float32)
    plain = memory.report(lambda x: x * 2.0, x)
    donated = memory.report(jax.jit(lambda x: x * 2.0, donate_argnums=0), x)
    assert plain.alias_bytes == 0
    assert donated.alias_bytes == 256 * 256 * F32
    assert donated.total_bytes == plain.total_bytes - 256 * 256 * F32


def mlp_loss(params, x):
    for w1, w2 in params:
        x = x + jnp.tanh(x @ w1) @ w2
    return jnp.mean(x**2)


def scanned_loss(policy):
    body = memory.remat(lambda x, w: (x + jnp.tanh(x @ w[0]) @ w[1], None), policy,
                        prevent_cse=False)
    return lambda ws, x: jnp.mean(jax.lax.scan(body, x, ws)[0] ** 2)


def stacked(layers, d, hidden):
    return (jax.ShapeDtypeStruct((layers, d, hidden), jnp.float32),
            jax.ShapeDtypeStruct((layers, hidden, d), jnp.float32))


def test_report_residuals_params_and_optimizer_state():
    params = [(np.ones((16, 32), np.float32), np.ones((32, 16), np.float32))] * 2
    x = jax.ShapeDtypeStruct((8, 16), jnp.float32)
    opt_state = optax.adam(1e-3).init(params)
    r = memory.report(jax.grad(mlp_loss), params, x, loss=mlp_loss, params=params,
                      opt_state=opt_state)
    n = 2 * 2 * 16 * 32
    assert r.params_bytes == r.grads_bytes == n * F32
    assert r.opt_state_bytes == 2 * n * F32 + 4  # two moments and an int32 count
    assert r.residual_bytes == memory.residual_bytes(mlp_loss, params, x)
    assert r.flops is not None and r.flops > 0
    table = str(r)
    for label in ("arguments", "temporaries", "total (peak estimate)", "residuals for backward",
                  "optimizer state"):
        assert label in table
    assert [label for label, _ in r.rows()][:6] == [
        "arguments", "outputs", "temporaries", "aliased (donated)", "generated code",
        "total (peak estimate)",
    ]


def test_remat_shows_in_temp_bytes_inside_scan():
    ws, x = stacked(8, 64, 256), jax.ShapeDtypeStruct((128, 64), jnp.float32)
    none = memory.report(jax.grad(scanned_loss("none")), ws, x)
    full = memory.report(jax.grad(scanned_loss("full")), ws, x)
    # "none" stores each layer's (128, 256) hidden activations for all 8 layers
    assert full.temp_bytes < none.temp_bytes
    assert none.temp_bytes - full.temp_bytes >= 8 * 128 * 256 * F32
    assert full.flops > none.flops  # the recomputation


def test_device_budget_on_cpu_needs_an_explicit_budget():
    if jax.devices()[0].platform != "cpu":
        pytest.skip("CPU-only behaviour")
    with pytest.raises(ValueError, match="budget_bytes must be given"):
        memory.device_budget()
    with pytest.raises(ValueError, match="budget_bytes must be given"):
        memory.fit_batch(lambda b: (jnp.sum, (jnp.ones(b),)))


# -- fit_batch ---------------------------------------------------------------

D, HIDDEN = 64, 256
W = jax.ShapeDtypeStruct((D, HIDDEN), jnp.float32)


def forward(w, x):
    return jnp.tanh(x @ w) @ w.T


@functools.cache  # the same jitted object: JAX then compiles each shape once
def jitted_forward():
    return jax.jit(forward)


def build_step(batch):
    return jitted_forward(), (W, jax.ShapeDtypeStruct((batch, D), jnp.float32))


def total_at(batch):
    fn, args = build_step(batch)
    return memory.report(fn, *args, residuals=False).total_bytes


LIMIT = 16


def brute_force(budget, multiple_of=1):
    fits = [b for b in range(multiple_of, LIMIT + 1, multiple_of) if total_at(b) <= budget]
    return max(fits)


def test_memory_grows_with_the_batch():
    totals = [total_at(b) for b in range(1, LIMIT + 1)]
    assert all(a <= b for a, b in itertools.pairwise(totals))
    assert totals[-1] > totals[0]


# -- choose_policy -------------------------------------------------------------

WS, X = stacked(4, 16, 64), jax.ShapeDtypeStruct((32, 16), jnp.float32)
POLICIES = ("none", "dots", "full")


@functools.cache
def jitted_step(name):
    return jax.jit(jax.grad(scanned_loss(name)))


def build_policy(name):
    return jitted_step(name), (WS, X)


def policy_reports():
    return {p: memory.report(jitted_step(p), WS, X, residuals=False) for p in POLICIES}


def expected_choice(budget):
    fitting = [p for p in POLICIES if policy_reports()[p].total_bytes <= budget]
    return min(fitting, key=lambda p: (policy_reports()[p].flops, POLICIES.index(p)))


def test_choose_policy_picks_the_least_recomputation_that_fits():
    reps = policy_reports()
    assert reps["full"].total_bytes < reps["none"].total_bytes
    assert reps["full"].flops > reps["none"].flops
    big = max(r.total_bytes for r in reps.values())
    assert memory.choose_policy(build_policy, big, policies=POLICIES) == "none"
    tight = min(r.total_bytes for r in reps.values())
    assert memory.choose_policy(build_policy, tight, policies=POLICIES) == "full"
    for budget in sorted(r.total_bytes for r in reps.values()):
        assert memory.choose_policy(build_policy, budget, policies=POLICIES) == expected_choice(
            budget
        )


def test_choose_policy_error_lists_every_policy():
    tight = min(r.total_bytes for r in policy_reports().values()) - 1
    with pytest.raises(ValueError, match="no policy fits") as e:
        memory.choose_policy(build_policy, tight, policies=POLICIES)
    for p in POLICIES:
        assert f"'{p}': {policy_reports()[p].total_bytes} bytes" in str(e.value)
    with pytest.raises(ValueError, match="policies"):
        memory.choose_policy(build_policy, 10**9, policies=())
    with pytest.raises(ValueError, match="not a known policy"):
        memory.choose_policy(build_policy, 10**9, policies=("nope",))


def test_report_of_a_training_step_counts_the_loss_residuals():
    params = [(np.ones((16, 32), np.float32), np.ones((32, 16), np.float32))]
    x = jax.ShapeDtypeStruct((8, 16), jnp.float32)
    opt = optax.sgd(0.1)

    def step(params, opt_state, x):
        grads = jax.grad(mlp_loss)(params, x)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    r = memory.report(step, params, opt.init(params), x, loss=mlp_loss, loss_args=(params, x))
    assert r.residual_bytes == memory.residual_bytes(mlp_loss, params, x) > 0
    with pytest.raises(TypeError):  # loss called with the step's three arguments
        memory.report(step, params, opt.init(params), x, loss=mlp_loss)
