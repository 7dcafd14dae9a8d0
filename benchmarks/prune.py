"""Pruning speed: jaxrm.prune next to torch.nn.utils.prune (and jaxpruner if installed).

1. Global magnitude masks over 20 leaves of 1000x1000 float32 at sparsity 0.9,
   against ``torch.nn.utils.prune.global_unstructured`` (L1Unstructured) on
   the same weights, and against one memory pass over the weights (a memcpy
   into a preallocated buffer).
2. The cost of a training step with ``sparsify`` (MLP 784-1024-1024-10,
   batch 256, adam, masks recomputed every 10 steps) relative to the dense step.
3. Per-slice masks of a stacked kernel against the same slices as leaves.
4. ``sparsify`` refresh scaling: the mask refresh under ``jit`` at 1M / 4M /
   16M weights against a memcpy, its fitted exponent, and the compile time of
   8 / 32 / 128 leaves of one shape (``--only-refresh``).
5. A one-off ``masks`` call in a fresh process against its steady state.

Run: ``python benchmarks/prune.py`` (``make bench`` runs every benchmark).
The contenders of each table run interleaved, round by round, in one process
(``_harness``); min and median are printed with the load average. JAX results
are waited for with ``block_until_ready``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _harness import RESNET18_SETUP, Setup, conditions, fresh_table, load, memcpy, rounds, table

from jaxrm import prune


def global_masks(repeats: int, leaves: int, size: int, sparsity: float) -> None:
    print(f"== global magnitude masks: {leaves} leaves of {size}x{size} float32, "
          f"sparsity {sparsity}")
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((size, size), dtype=np.float32) for _ in range(leaves)]
    params = {f"layer{i}": {"kernel": jnp.asarray(w)} for i, w in enumerate(weights)}
    contenders, notes = {}, {}
    eager = lambda: prune.masks(prune.magnitude(params), sparsity, scope="global")
    jitted_fn = jax.jit(lambda p: prune.masks(prune.magnitude(p), sparsity, scope="global"))
    contenders["jaxrm masks (eager)"] = eager
    notes["jaxrm masks (eager)"] = "exact, ties by index"
    contenders["jaxrm masks (jit)"] = lambda: jitted_fn(params)
    notes["jaxrm masks (jit)"] = "same masks"
    contenders["memcpy of the weights"] = memcpy(weights)
    notes["memcpy of the weights"] = "one memory pass"
    ours = eager()
    kept = sum(int(np.asarray(m["kernel"]).sum()) for m in ours.values())
    assert kept == round((1 - sparsity) * leaves * size * size), kept

    try:
        import torch
        from torch.nn.utils import prune as tprune
    except ImportError:
        torch = None
        print("torch is not installed: skipping torch.nn.utils.prune")
    if torch is not None:
        def modules():
            mods = []
            for w in weights:
                lin = torch.nn.Linear(size, size, bias=False)
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(w))
                mods.append(lin)
            return mods

        def run_torch(mods):
            tprune.global_unstructured(
                [(m, "weight") for m in mods],
                pruning_method=tprune.L1Unstructured,
                amount=sparsity,
            )
            return mods

        mods = run_torch(modules())
        same = all(
            np.array_equal(m.weight_mask.numpy().astype(bool),
                           np.asarray(ours[f"layer{i}"]["kernel"]))
            for i, m in enumerate(mods)
        )
        name = f"torch {torch.__version__} global_unstructured"
        contenders[name] = Setup(modules, run_torch)
        notes[name] = f"masks identical: {same}"

    try:
        import jaxpruner
    except ImportError:
        print("jaxpruner is not installed: skipping it")
    else:
        try:
            import functools

            pruner = jaxpruner.GlobalMagnitudePruning(
                sparsity_distribution_fn=functools.partial(
                    jaxpruner.sparsity_distributions.uniform, sparsity=sparsity
                )
            )
            contenders["jaxpruner GlobalMagnitudePruning"] = (
                lambda: pruner.instant_sparsify(params)[1]
            )
            notes["jaxpruner GlobalMagnitudePruning"] = "instant_sparsify"
        except Exception as e:  # its API has changed between releases
            print(f"jaxpruner could not be timed: {type(e).__name__}: {e}")

    times = rounds(contenders, repeats)
    table(times, "jaxrm masks (eager)", notes)
    t_ours = min(min(t) for n, t in times.items() if n.startswith("jaxrm"))
    print(f"jaxrm / memcpy (min): {t_ours / min(times['memcpy of the weights']):.2f}x")
    for n, t in times.items():
        if n.startswith("torch"):
            print(f"torch / jaxrm (min): {min(t) / t_ours:.1f}x")
    print()


def mlp_init(key, sizes):
    params = {}
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        key, sub = jax.random.split(key)
        params[f"Dense_{i}"] = {
            "kernel": jax.random.normal(sub, (a, b), jnp.float32) / np.sqrt(a),
            "bias": jnp.zeros((b,), jnp.float32),
        }
    return params


def mlp_apply(params, x):
    n = len(params)
    for i in range(n):
        layer = params[f"Dense_{i}"]
        x = x @ layer["kernel"] + layer["bias"]
        if i < n - 1:
            x = jax.nn.relu(x)
    return x


def train_step_overhead(repeats: int, steps: int, batch: int, every: int) -> None:
    print(f"== training step: MLP 784-1024-1024-10, batch {batch}, adam, "
          f"masks every {every} steps ({steps} steps per timing)")
    params0 = mlp_init(jax.random.key(0), [784, 1024, 1024, 10])
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 784), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, size=batch))

    def loss(p):
        logits = mlp_apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def make(tx):
        @jax.jit
        def step(p, s):
            g = jax.grad(loss)(p)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        def run():
            p, s = params0, tx.init(params0)
            for _ in range(steps):
                p, s = step(p, s)
            return p

        return run

    dense = make(optax.adam(1e-3))
    sparse = make(prune.sparsify(optax.adam(1e-3), prune.polynomial(0.9, 0, 10 * steps,
                                                                    every=every),
                                 every=every))
    times = rounds({"dense adam step": dense, "sparsify(adam) step": sparse}, repeats)
    times = {k: [t / steps for t in v] for k, v in times.items()}
    table(times, "dense adam step", {"sparsify(adam) step": f"mean over {steps} steps"})

    # Steps one by one: what a mask refresh costs over a plain step.
    sparse_tx = prune.sparsify(optax.adam(1e-3), prune.constant(0.9), every=every)
    dense_tx = optax.adam(1e-3)

    def stepper(tx):
        @jax.jit
        def step(p, s):
            g = jax.grad(loss)(p)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        return step

    s_step, d_step = stepper(sparse_tx), stepper(dense_tx)
    ps, ss = s_step(params0, sparse_tx.init(params0))
    pd, sd = d_step(params0, dense_tx.init(params0))
    jax.block_until_ready((ps, pd))
    refresh, plain, dense_times = [], [], []
    for i in range(1, 6 * every + 1):
        start = time.perf_counter()
        ps, ss = s_step(ps, ss)
        jax.block_until_ready(ps)
        (refresh if i % every == 0 else plain).append(time.perf_counter() - start)
        start = time.perf_counter()
        pd, sd = d_step(pd, sd)
        jax.block_until_ready(pd)
        dense_times.append(time.perf_counter() - start)
    med = lambda xs: float(np.median(xs)) * 1e3
    print(f"median step: dense {med(dense_times):.1f} ms, sparsify plain {med(plain):.1f} ms, "
          f"sparsify refresh {med(refresh):.1f} ms")
    amortized = (med(plain) * (every - 1) + med(refresh)) / every
    print(f"sparsify mean over a refresh period / dense (medians): "
          f"{amortized / med(dense_times):.3f}x; {load()}")
    print()


def per_slice_ratio(n_rounds: int, layers: int, size: int, sparsity: float) -> None:
    """``scope="layer"`` masks of one (L, d, d) stacked kernel against the same L slices as
    separate leaves: the cost of per-slice handling (eager and jit), interleaved round by
    round, with a memcpy into a preallocated buffer as the one-memory-pass yardstick."""
    print(f"== per-slice masks: stacked ({layers}, {size}, {size}) vs {layers} leaves of "
          f"({size}, {size}), sparsity {sparsity}; load average {os.getloadavg()}")
    rng = np.random.default_rng(0)
    w = np.abs(rng.standard_normal((layers, size, size), dtype=np.float32))
    stacked = {"layers": {"Dense_0": {"kernel": jnp.asarray(w)}}}
    apart = {f"l{i}": {"kernel": jnp.asarray(w[i])} for i in range(layers)}
    jit_stacked = jax.jit(lambda t: prune.masks(t, sparsity))
    jit_apart = jax.jit(lambda t: prune.masks(t, sparsity))
    buf = np.empty_like(w)
    cases = {
        "stacked (eager)": lambda: prune.masks(stacked, sparsity),
        "separate (eager)": lambda: prune.masks(apart, sparsity),
        "stacked (jit)": lambda: jit_stacked(stacked),
        "separate (jit)": lambda: jit_apart(apart),
        "memcpy": lambda: np.copyto(buf, w),
    }
    got = np.asarray(cases["stacked (eager)"]()["layers"]["Dense_0"]["kernel"])
    want = [np.asarray(cases["separate (eager)"]()[f"l{i}"]["kernel"]) for i in range(layers)]
    np.testing.assert_array_equal(got, np.stack(want))  # the same masks, slice by slice
    times = {name: [] for name in cases}
    for fn in cases.values():
        jax.block_until_ready(fn())
    for _ in range(n_rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        print(f"  {name:18} min {min(ts) * 1e3:8.1f} ms  median {np.median(ts) * 1e3:8.1f} ms")
    for mode in ("eager", "jit"):
        a, b = times[f"stacked ({mode})"], times[f"separate ({mode})"]
        print(f"  stacked / separate ({mode}): min {min(a) / min(b):.2f}x, "
              f"median {np.median(a) / np.median(b):.2f}x")
    print()


def _sparsify_steps(params, grads):
    """Jitted ``sparsify(sgd)`` updates: one refreshing the masks every step, one never after
    its first step (the schedule is constant), both past their first step."""
    out = {}
    for name, every in (("refresh", 1), ("plain", None)):
        tx = prune.sparsify(optax.sgd(0.0), prune.constant(0.9), every=every)
        step = jax.jit(tx.update)
        state = tx.init(params)
        start = time.perf_counter()
        _, state = jax.block_until_ready(step(grads, state, params))
        out[name] = (lambda step=step, state=state: step(grads, state, params))
        out[name + " compile"] = time.perf_counter() - start
    return out


def _first_call(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(jax.jit(fn)(*args))
    return time.perf_counter() - start


def _yardstick_compiles(params) -> tuple[float, float]:
    """First-call times of two yardsticks for the refreshing step's compile.

    * The least a refresh inside the step can be: the same ``lax.cond`` on the
      same state, whose refresh branch ranks the masked magnitudes of all
      leaves at once (one concatenation, a comparison with each row's maximum
      in place of the exact selection) and cuts the flags back into leaves as
      ``sparsify`` does. What it costs is the per-leaf part of any refresh.
    * A step whose masks never change (``prune.static``): the masked update alone.
    """
    from jaxrm.prune._select import _cut

    leaves = jax.tree.leaves(params)
    shapes = [x.shape for x in leaves]

    def minimal(ps, gs, ms, count):
        def refresh():
            rows = jnp.concatenate([jnp.where(m, jnp.abs(p), -1.0).reshape(1, -1)
                                    for m, p in zip(ms, ps)])
            flags = rows >= 0.5 * jnp.max(rows, axis=1, keepdims=True)
            return [f.reshape(s) for f, s in zip(_cut(flags, [1] * len(ps)), shapes)]
        new = jax.lax.cond(count == 0, refresh, lambda: list(ms))
        return [jnp.where(m, g, -p) for m, g, p in zip(new, gs, ps)], new

    masks = [jnp.ones(s, bool) for s in shapes]
    floor = _first_call(minimal, leaves, leaves, masks, jnp.int32(0))
    tx = prune.static(optax.sgd(0.0), 0.9, key=jax.random.key(0), init="uniform")
    fixed = _first_call(tx.update, params, tx.init(params), params)
    return floor, fixed


def refresh_scaling(n_rounds: int, sizes: tuple[int, ...], leaf_counts: tuple[int, ...]) -> None:
    """``sparsify`` mask refresh under ``jit``: time against the weights (4 square leaves),
    the memcpy yardstick, the fitted exponent, and compile time against the leaf count."""
    print(f"== sparsify refresh scaling (jit, magnitude, layer scope, 4 leaves); {load()}")
    rng = np.random.default_rng(0)
    per_size = []
    for total in sizes:
        side = round(float(np.sqrt(total / 4)))
        ws = [rng.standard_normal((side, side), dtype=np.float32) for _ in range(4)]
        params = {f"Dense_{i}": {"kernel": jnp.asarray(w)} for i, w in enumerate(ws)}
        grads = jax.tree.map(lambda x: 0.01 * x, params)
        steps = _sparsify_steps(params, grads)
        times = rounds({"refresh step": steps["refresh"], "plain step": steps["plain"],
                        "memcpy": memcpy(ws)}, n_rounds)
        refresh = min(times["refresh step"]) - min(times["plain step"])
        passes = refresh / min(times["memcpy"])
        per_size.append((4 * side * side, refresh))
        print(f"  {4 * side * side / 1e6:6.1f}M weights: refresh {refresh * 1e3:8.1f} ms "
              f"(step {min(times['refresh step']) * 1e3:.1f} - plain "
              f"{min(times['plain step']) * 1e3:.1f}), memcpy {min(times['memcpy']) * 1e3:.2f} ms"
              f", {passes:.1f} memory passes; compile {steps['refresh compile']:.2f} s")
    if len(per_size) > 1:
        n, t = np.log([p[0] for p in per_size]), np.log([max(p[1], 1e-6) for p in per_size])
        print(f"  fitted exponent (refresh ~ n^e): e = {np.polyfit(n, t, 1)[0]:.2f}")
    for leaves in leaf_counts:
        params = {f"Dense_{i}": {"kernel": jnp.ones((128, 128), jnp.float32)}
                  for i in range(leaves)}
        steps = _sparsify_steps(params, params)
        floor, fixed = _yardstick_compiles(params)
        print(f"  {leaves:4d} leaves of 128x128: first refreshing step (compile) "
              f"{steps['refresh compile']:.2f} s; minimal refresh {floor:.2f} s; "
              f"fixed masks {fixed:.2f} s")
    print(f"  ({load()})")
    print()


FRESH_CASES = {
    "masks nm(2, 4), ResNet-18 kernels": RESNET18_SETUP + """
from jaxrm import prune
del tree["layer0"]  # 3 input channels: not a multiple of 4
call = lambda: prune.masks(prune.magnitude(tree), 0.5, pattern=prune.nm(2, 4))
""",
    "masks unstructured 0.9, ResNet-18 kernels": RESNET18_SETUP + """
from jaxrm import prune
call = lambda: prune.masks(prune.magnitude(tree), 0.9)
""",
}


def fresh_process_calls() -> dict[str, float]:
    """First call in a fresh process (compilation included) against the steady state."""
    return fresh_table("fresh process: prune.masks on numpy trees", FRESH_CASES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--leaves", type=int, default=20)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--only-slices", action="store_true", help="only the per-slice ratio")
    parser.add_argument("--only-refresh", action="store_true", help="only the refresh scaling")
    parser.add_argument("--refresh-sizes", type=int, nargs="+",
                        default=[1_000_000, 4_000_000, 16_000_000])
    args = parser.parse_args()
    conditions("pruning: jaxrm.prune, torch.nn.utils.prune, jaxpruner")
    if args.only_slices:
        per_slice_ratio(args.repeats, 12, 768, 0.9)
        return
    if args.only_refresh:
        refresh_scaling(args.repeats, tuple(args.refresh_sizes), (8, 32, 128))
        return
    global_masks(args.repeats, args.leaves, args.size, 0.9)
    train_step_overhead(args.repeats, args.steps, 256, 10)
    per_slice_ratio(args.repeats, 12, 768, 0.9)
    refresh_scaling(args.repeats, tuple(args.refresh_sizes), (8, 32, 128))
    fresh_process_calls()


if __name__ == "__main__":
    main()
