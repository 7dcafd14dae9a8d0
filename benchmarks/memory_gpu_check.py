"""GPU/TPU-only behaviour of jaxrm.memory: default budgets and the offload policy.

Run on a machine with a GPU or TPU: python benchmarks/memory_gpu_check.py
Prints each check with PASS/FAIL and the numbers it read; exits 1 on a failure.
On CPU it prints what it would check and exits 0.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import memory

failures = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}")
    if not ok:
        failures.append(name)


def layer(x, w):
    return x + jnp.tanh(x @ w[0]) @ w[1]


def loss_with(policy, layers=8):
    step = memory.remat(layer, policy)

    def loss(ws, x):
        for w in ws:
            x = step(x, w)
        return jnp.mean(x**2)

    return loss


def main():
    dev = jax.devices()[0]
    print(f"jax {jax.__version__}, device {dev.device_kind} ({dev.platform}), "
          f"{jax.device_count()} devices")
    if dev.platform == "cpu":
        print("CPU only: nothing to check (device_budget raises, offload_dots raises).")
        return 0

    # 1. the default budget is the device's bytes_limit
    stats = dev.memory_stats() or {}
    budget = memory.device_budget()
    check("device_budget == memory_stats()['bytes_limit']",
          budget == stats.get("bytes_limit"), f"{budget} bytes")

    # 2. offload_dots: same values and gradients as no remat, residuals in host memory
    rng = np.random.default_rng(0)
    d, h, b = 1024, 4096, 512
    ws = [(jnp.asarray(rng.standard_normal((d, h), np.float32) * 0.02),
           jnp.asarray(rng.standard_normal((h, d), np.float32) * 0.02)) for _ in range(8)]
    x = jnp.asarray(rng.standard_normal((b, d), np.float32))
    ref = jax.jit(jax.value_and_grad(loss_with("none")))(ws, x)
    got = None
    try:
        got = jax.jit(jax.value_and_grad(loss_with("offload_dots")))(ws, x)
        diff = max(float(jnp.max(jnp.abs(a - c)))
                   for a, c in zip(jax.tree.leaves(got), jax.tree.leaves(ref)))
        check("offload_dots gradient == no remat", diff < 1e-3, f"max abs diff {diff:.2e}")
        for p in ("none", "dots_no_batch", "offload_dots"):
            r = memory.report(jax.grad(loss_with(p)), ws, x, loss=loss_with(p))
            print(f"      {p:<14} device total {r.total_bytes:>12,} B  temp {r.temp_bytes:>12,} B"
                  f"  host {r.host_bytes:>12,} B  residuals {r.residual_bytes:>12,} B")
        off = memory.report(jax.grad(loss_with("offload_dots")), ws, x, residuals=False)
        keep = memory.report(jax.grad(loss_with("dots_no_batch")), ws, x, residuals=False)
        check("offload_dots uses less device temp than dots_no_batch",
              off.temp_bytes < keep.temp_bytes, f"{off.temp_bytes} < {keep.temp_bytes}")
    except Exception as e:  # report, do not hide
        check("offload_dots compiles and runs", False, f"{type(e).__name__}: {e}")

    # 3. fit_batch and choose_policy with the default budget (free the arrays above first:
    #    the budget is the whole device)
    ref = got = None
    abstract_ws = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), ws)
    grad = jax.jit(jax.grad(loss_with("dots_no_batch")))

    def build(n):
        return grad, (abstract_ws, jax.ShapeDtypeStruct((n, d), jnp.float32))

    n = memory.fit_batch(build, start=8, multiple_of=8, limit=1 << 20)
    total = memory.report(*((build(n)[0],) + build(n)[1]), residuals=False).total_bytes
    check("fit_batch with the default budget fits", total <= budget,
          f"batch {n}: {total} <= {budget}")
    try:
        xs = jnp.zeros((n, d), jnp.float32)
        jax.block_until_ready(grad(ws, xs))
        del xs
        check("the fitted batch runs without running out of memory", True, f"batch {n}")
    except Exception as e:
        check("the fitted batch runs without running out of memory", False, str(e)[:200])

    def build_policy(p):
        return jax.jit(jax.grad(loss_with(p))), (abstract_ws, jax.ShapeDtypeStruct((n, d),
                                                                                 jnp.float32))

    chosen = memory.choose_policy(build_policy, policies=("none", "dots_no_batch", "full"))
    check("choose_policy with the default budget", chosen in ("none", "dots_no_batch", "full"),
          chosen)
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
