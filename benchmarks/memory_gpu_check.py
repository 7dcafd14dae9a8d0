"""GPU/TPU-only behaviour of jaxrm.memory: budgets, offload policies, 8-bit state, OOM guard.

Run on a machine with a GPU or TPU: python benchmarks/memory_gpu_check.py
Prints each check with PASS/FAIL and the numbers it read, then one line of JSON
(checks, failures, seconds); exits 1 on a failure. About a minute on one GPU.
Without a GPU or TPU it says so and exits 2. ``--dry-run`` runs every code
path at tiny sizes on any backend (the checks that need separate device memory,
offloaded bytes and a real out-of-memory error are marked SKIP, and the OOM
guard meets a simulated budget instead); it shows the script works, not the
device.
"""

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import memory

failures = []
results = []
DRY = False


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}")
    results.append({"check": name, "ok": bool(ok), "detail": str(detail)[:300]})
    if not ok:
        failures.append(name)


def skip(name, why):
    print(f"SKIP  {name}  {why}")
    results.append({"check": name, "ok": None, "detail": why})


def device_check(name, ok, detail=""):
    """A check that only a device with memory of its own can pass."""
    if DRY:
        skip(name, f"dry run ({detail})")
    else:
        check(name, ok, detail)


def layer(x, w):
    return x + jnp.tanh(x @ w[0]) @ w[1]


def loss_with(policy, layers=8, layer=layer):
    step = memory.remat(layer, policy)

    def loss(ws, x):
        for w in ws:
            x = step(x, w)
        return jnp.mean(x**2)

    return loss


def summary(start, **extra):
    print(json.dumps({"device": jax.devices()[0].device_kind, "dry_run": DRY,
                      "checks": len(results), "failures": failures,
                      "seconds": round(time.perf_counter() - start, 1), **extra,
                      "results": results}))


def main(argv=None):
    global DRY
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes on any backend; device-only checks are skipped")
    DRY = ap.parse_args(argv).dry_run
    start = time.perf_counter()
    dev = jax.devices()[0]
    print(f"jax {jax.__version__}, device {dev.device_kind} ({dev.platform}), "
          f"{jax.device_count()} devices")
    if dev.platform == "cpu" and not DRY:
        print("FAIL  no GPU or TPU: this check needs one (CPU has no device memory of its own; "
              "--dry-run exercises the code paths here)")
        summary(start, error="no GPU or TPU")
        return 2

    # 1. the default budget is the device's bytes_limit (less DEFAULT_MARGIN in fit_batch)
    if DRY:
        budget = 32 * 2**20
        skip("device_budget == memory_stats()['bytes_limit']", "dry run: budget 32 MiB")
    else:
        stats = dev.memory_stats() or {}
        budget = memory.device_budget()
        check("device_budget == memory_stats()['bytes_limit']",
              budget == stats.get("bytes_limit"), f"{budget} bytes")
        margin = memory.device_budget(margin=memory.DEFAULT_MARGIN)
        check("device_budget(margin) leaves the margin free",
              margin == int(budget * (1 - memory.DEFAULT_MARGIN)), f"{margin} bytes")

    # 2. offload_dots: same values and gradients as no remat, residuals in host memory
    rng = np.random.default_rng(0)
    d, h, b = (64, 256, 32) if DRY else (1024, 4096, 512)
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
        device_check("offload_dots uses less device temp than dots_no_batch",
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

    n = memory.fit_batch(build, budget if DRY else None, start=8, multiple_of=8,
                         limit=1 << 20, progress=False)
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

    chosen = memory.choose_policy(build_policy, budget if DRY else None,
                                  policies=("none", "dots_no_batch", "full"))
    check("choose_policy with the default budget", chosen in ("none", "dots_no_batch", "full"),
          chosen)

    offload_names_check(d, h, b)
    quantized_state_check(1 << 14 if DRY else 1 << 24)
    oom_guard_check(budget)
    print(f"{len(failures)} failure(s)")
    summary(start)
    return 1 if failures else 0


def offload_names_check(d, h, b, layers=8):
    """offload_names: the tagged residuals move to pinned_host; gradients unchanged."""
    from jax.ad_checkpoint import checkpoint_name

    def tagged(x, w):
        return x + checkpoint_name(jnp.tanh(x @ w[0]), "hidden") @ w[1]

    def loss_of(policy):
        return loss_with(policy, layers, tagged)

    rng = np.random.default_rng(1)
    ws = [(jnp.asarray(rng.standard_normal((d, h), np.float32) * 0.02),
           jnp.asarray(rng.standard_normal((h, d), np.float32) * 0.02)) for _ in range(layers)]
    x = jnp.asarray(rng.standard_normal((b, d), np.float32))
    try:
        ref = jax.jit(jax.grad(loss_of("names:hidden")))(ws, x)
        got = jax.jit(jax.grad(loss_of("offload_names:hidden")))(ws, x)
        diff = max(float(jnp.max(jnp.abs(a - c)))
                   for a, c in zip(jax.tree.leaves(got), jax.tree.leaves(ref)))
        check("offload_names gradient == names", diff < 1e-4, f"max abs diff {diff:.2e}")
        keep = memory.report(jax.grad(loss_of("names:hidden")), ws, x, residuals=False)
        off = memory.report(jax.grad(loss_of("offload_names:hidden")), ws, x, residuals=False)
        device_check("offload_names: less device temp, bytes in host memory",
              off.temp_bytes < keep.temp_bytes and off.host_bytes > 0,
              f"temp {off.temp_bytes} < {keep.temp_bytes}, host {off.host_bytes}")
    except Exception as e:
        check("offload_names compiles and runs", False, f"{type(e).__name__}: {e}")
    try:
        memory.remat(tagged, "names:nope")(x, ws[0])
        check("a names: policy with a missing tag raises", False, "no error")
    except ValueError:
        check("a names: policy with a missing tag raises", True)


def quantized_state_check(n=1 << 24):
    """8-bit Adam state: a quarter of the bytes, the same steps as float Adam to ~1e-2."""
    import optax

    from jaxrm.tree import nbytes

    params = {"w": jnp.asarray(np.random.default_rng(2).standard_normal((n // 4096, 4096)),
                               jnp.float32)}
    grad = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(p["w"]) ** 2)))
    out = {}
    for name, tx in (("float", optax.adam(1e-3)),
                     ("8-bit", memory.quantized_state(optax.adam(1e-3), min_size=1024))):
        @jax.jit
        def step(p, s, tx=tx):
            u, s = tx.update(grad(p), s, p)
            return optax.apply_updates(p, u), s

        p, s = params, tx.init(params)
        for _ in range(3):
            p, s = step(p, s)
        jax.block_until_ready(p)
        t = time.perf_counter()
        for _ in range(10):
            p, s = step(p, s)
        jax.block_until_ready(p)
        out[name] = (p, nbytes(s), (time.perf_counter() - t) / 10)
    ratio = out["8-bit"][1] / out["float"][1]
    check("8-bit state bytes <= 0.27 x float", ratio <= 0.27, f"{ratio:.4f}")
    diff = float(jnp.max(jnp.abs(out["8-bit"][0]["w"] - out["float"][0]["w"])))
    check("8-bit Adam follows float Adam", diff < 1e-2, f"max |dw| after 13 steps {diff:.2e}")
    t_float, t_q = out["float"][2], out["8-bit"][2]
    print(f"      step time float {t_float * 1e3:.2f} ms, 8-bit {t_q * 1e3:.2f} ms "
          f"({t_q / t_float:.2f}x)")


def oom_guard_check(budget):
    """A real RESOURCE_EXHAUSTED: activations beyond the device, split until they fit."""
    free = budget if DRY else memory.device_budget()
    d = 256 if DRY else 4096
    layers = 4
    # activations of one layer: batch * d * 4 bytes; pick a batch whose unsplit step needs
    # about twice the device so only a split fits
    batch = int(2 * free / (layers * 3 * d * 4)) // 64 * 64
    w = jnp.asarray(np.random.default_rng(3).standard_normal((layers, d, d), np.float32)
                    / np.sqrt(d))

    def loss(w, x):
        for i in range(layers):
            x = jnp.tanh(x @ w[i])
        return jnp.mean(x**2)

    grad_fn = jax.value_and_grad(loss)

    def make_step(grad):
        return lambda w, x: grad(w, x)

    # a dry run has no device to exhaust: the budget check simulates the limit
    guarded = memory.oom_guard(make_step, grad_fn, max_micro_batches=256,
                               budget_bytes=budget if DRY else None)
    name = "oom_guard recovers from " + ("a simulated limit" if DRY else "RESOURCE_EXHAUSTED")
    try:
        x = jax.random.normal(jax.random.key(0), (batch, d // 8), jnp.float32)
        x = jnp.tile(x, (1, 8))
        value, _ = guarded(w, x)
        check(name, guarded.micro_batches > 1,
              f"batch {batch}, {guarded.micro_batches} micro-batches, history "
              f"{[k for k, _ in guarded.history]}")
        # the split step against the same gradient computed in pieces by hand
        k = guarded.micro_batches
        ref_value = 0.0
        for i in range(k):
            ref_value += float(jax.jit(loss)(w, x[i * batch // k : (i + 1) * batch // k])) / k
        check("oom_guard loss == the mean over its micro-batches",
              abs(float(value) - ref_value) <= 1e-4 * abs(ref_value) and ref_value > 0,
              f"{float(value):.6e} vs {ref_value:.6e}")
    except Exception as e:
        check(name, False, f"{type(e).__name__}: {e}"[:300])


if __name__ == "__main__":
    sys.exit(main())
