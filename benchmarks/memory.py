"""Memory of remat policies, batch fitting and FSDP on CPU, with each policy's step time.

Run: python benchmarks/memory.py   (about a minute on a few CPU cores)

Model: a 16-layer residual MLP, d=512, hidden 4*d, x <- x + W2 tanh(W1 x).
* scanned: the layers under lax.scan, the remat policy on the scan body;
  compiled temp_bytes of the training gradient per policy (CPU shows remat
  only inside loops);
* unrolled: a Python loop of the same layers, the policy on each layer;
  residual_bytes (bytes kept for the backward pass) per policy;
* step time of the scanned gradient per policy, relative to "none";
* fit_batch under a 320 MiB budget, checked against 1.1x the batch;
* FSDP of parameters + Adam state over 8 simulated CPU devices.
The peer of each jaxrm.remat policy is plain jax.checkpoint (and Flax
nn.remat, the same call); jaxrm adds names, reports and fitting, not speed.
"""
# ruff: noqa: E402  (the device count is set before JAX starts)

import math
import time

import jax

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp
import numpy as np
import optax
from _harness import conditions, memcpy, rounds, table

from jaxrm import memory

LAYERS, D, HIDDEN = 16, 512, 4 * 512
MEM_BATCH, TIME_BATCH = 256, 32
POLICIES = ["none", "dots", "dots_no_batch", "full"]
F32 = jnp.float32


def layer(x, w):
    w1, w2 = w
    return x + jnp.tanh(x @ w1) @ w2


def scanned_loss(policy):
    body = memory.remat(lambda x, w: (layer(x, w), None), policy, prevent_cse=False)
    return lambda ws, x: jnp.mean(jax.lax.scan(body, x, ws)[0] ** 2)


def unrolled_loss(policy):
    step = memory.remat(layer, policy)

    def loss(ws, x):  # ws: a list of per-layer (w1, w2), arguments of the loss
        for w in ws:
            x = step(x, w)
        return jnp.mean(x**2)

    return loss


def abstract_params():
    return (jax.ShapeDtypeStruct((LAYERS, D, HIDDEN), F32),
            jax.ShapeDtypeStruct((LAYERS, HIDDEN, D), F32))


def batch(n):
    return jax.ShapeDtypeStruct((n, D), F32)


def mib(n):
    return f"{n / 2**20:9.2f}"


def policies_table():
    ws = abstract_params()
    dev = jax.devices()[0]
    rng = np.random.default_rng(0)
    real_ws = jax.device_put(
        tuple((rng.standard_normal(s.shape, np.float32) * 0.02) for s in ws), dev
    )
    x_time = jax.device_put(rng.standard_normal((TIME_BATCH, D), np.float32), dev)
    rows, fns = [], {}
    for p in POLICIES:
        grad_scan = jax.jit(jax.grad(scanned_loss(p)))
        scan_rep = memory.report(grad_scan, ws, batch(MEM_BATCH), residuals=False)
        per_layer = [(jax.ShapeDtypeStruct((D, HIDDEN), F32),
                      jax.ShapeDtypeStruct((HIDDEN, D), F32))] * LAYERS
        unrolled_res = memory.residual_bytes(unrolled_loss(p), per_layer, batch(MEM_BATCH))
        fns[p] = lambda f=grad_scan: f(real_ws, x_time)
        rows.append((p, scan_rep, unrolled_res))
    # the same policy through plain jax.checkpoint gives the same executable memory
    body = jax.checkpoint(lambda x, w: (layer(x, w), None),
                          policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    peer = jax.jit(jax.grad(lambda ws, x: jnp.mean(jax.lax.scan(body, x, ws)[0] ** 2)))
    fns["jax.checkpoint(nothing_saveable)"] = lambda: peer(real_ws, x_time)
    fns["memcpy of the weights"] = memcpy(real_ws)
    times = rounds(fns, 5)
    rows = [(p, rep, res, min(times[p])) for p, rep, res in rows]
    table(times, "none")
    base_t = rows[0][3]
    print(f"16-layer residual MLP, d={D}, hidden={HIDDEN}; memory at batch {MEM_BATCH}, "
          f"step time at batch {TIME_BATCH} (gradient, scanned; min of 5 interleaved rounds)")
    print(f"{'policy':<14} {'scan temp MiB':>14} {'scan total MiB':>15} "
          f"{'unrolled resid. MiB':>20} {'flops / none':>13} {'step ms':>9} {'time / none':>12}")
    for p, rep, res, t in rows:
        print(f"{p:<14} {mib(rep.temp_bytes):>14} {mib(rep.total_bytes):>15} {mib(res):>20} "
              f"{rep.flops / rows[0][1].flops:13.2f} {t * 1e3:9.1f} {t / base_t:12.2f}")
    by = {p: (rep, res) for p, rep, res, _ in rows}
    temp_ratio = by["none"][0].temp_bytes / by["full"][0].temp_bytes
    res_ratio = by["none"][1] / max(by["full"][1], 1)
    print(f"scan temp_bytes none/full = {temp_ratio:.2f} (target >= 3); "
          f"unrolled residual_bytes none/full = "
          f"{'inf' if by['full'][1] == 0 else f'{res_ratio:.2f}'} "
          f"(full keeps {by['full'][1]} bytes besides the arguments; target >= 3)")

    peer_rep = memory.report(peer, ws, batch(MEM_BATCH), residuals=False)
    t_peer = min(times["jax.checkpoint(nothing_saveable)"])
    t_ours = rows[-1][3]
    print(f"'full' vs plain jax.checkpoint(nothing_saveable): temp "
          f"{by['full'][0].temp_bytes} vs {peer_rep.temp_bytes} bytes; step "
          f"{t_ours * 1e3:.1f} vs {t_peer * 1e3:.1f} ms (ratio {t_ours / t_peer:.2f})")


def fit_table():
    ws = abstract_params()
    grad_scan = jax.jit(jax.grad(scanned_loss("dots")))
    budget = 320 * 2**20

    def build(n):
        return grad_scan, (ws, batch(n))

    t = time.perf_counter()
    b = memory.fit_batch(build, budget, limit=1 << 16)
    t = time.perf_counter() - t
    over = math.ceil(1.1 * b)
    fits = memory.report(grad_scan, ws, batch(b), residuals=False).total_bytes
    more = memory.report(grad_scan, ws, batch(over), residuals=False).total_bytes
    print(f"\nfit_batch (policy 'dots', budget {mib(budget).strip()} MiB): batch {b} needs "
          f"{mib(fits).strip()} MiB (fits: {fits <= budget}); 1.1x = {over} needs "
          f"{mib(more).strip()} MiB (fits: {more <= budget}); search took {t:.1f} s")


def fsdp_table():
    m = memory.mesh(data=2, fsdp=4)
    rng = np.random.default_rng(0)
    params = {f"layer_{i}": {"w1": rng.standard_normal((D, HIDDEN), np.float32),
                             "b1": np.zeros(HIDDEN, np.float32),
                             "w2": rng.standard_normal((HIDDEN, D), np.float32)}
              for i in range(4)}
    state = (params, optax.adam(1e-3).init(params))
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    placed = memory.shard(state, memory.fsdp(state, m, axis=("data", "fsdp")))
    per = memory.per_device_bytes(placed)
    worst = max(per.values())
    print(f"\nFSDP over {len(per)} devices (4 MLP layers + Adam state): total {mib(total).strip()}"
          f" MiB, max per device {mib(worst).strip()} MiB = {worst / (total / 8):.3f} x total/8 "
          f"(target <= 1.05)")


if __name__ == "__main__":
    conditions(f"memory: remat policies, fit_batch, FSDP ({jax.device_count()} CPU devices)")
    policies_table()
    fit_table()
    fsdp_table()
