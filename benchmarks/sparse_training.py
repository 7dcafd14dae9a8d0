"""Sparse training step cost: RigL/SET/static/STE next to sparsify and the dense step.

A non-update step of [jaxrm.prune.rigl][] must cost about what a
non-refresh step of [jaxrm.prune.sparsify][] does (target <= 1.05x): the
growth sits in the true branch of a ``lax.cond``. Timed: one jitted step
(forward, backward, ``update``, ``apply_updates``) of an MLP
784-1024-1024-10 at batch 256 with adam and 90% ERK sparsity, on steps where
no mask changes (the count is set so that no update is due), and separately
a RigL mask-update step. A memcpy of the weights is the one-memory-pass
yardstick.

``--chunks`` times instead the reproduction's own compiled chunks
(``experiments.sparse_training``, dense, per step) for LeNet-5 and the LM,
as a ``lax.scan`` loop and fully unrolled: XLA's CPU convolutions are much
slower inside a loop body. It needs the cached MNIST and KJV corpus that
``make reproduce-sparse`` / ``reproduce-sparse-lm`` fetch.

Run: ``python benchmarks/sparse_training.py [--rounds N] [--chunks]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _harness import conditions, memcpy, rounds, table

from jaxrm import prune


def _mlp(key):
    sizes = (784, 1024, 1024, 10)
    keys = jax.random.split(key, len(sizes) - 1)
    return {f"l{i}": {"kernel": jax.random.normal(k, (a, b)) * a ** -0.5, "bias": jnp.zeros(b)}
            for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}


def _loss(p, x, y):
    h = x
    for i in range(3):
        h = h @ p[f"l{i}"]["kernel"] + p[f"l{i}"]["bias"]
        h = jax.nn.relu(h) if i < 2 else h
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()


def _stepper(tx, params, x, y, count, ste=False):
    state = tx.init(params)
    if "count" in getattr(state, "_fields", ()):
        state = state._replace(count=jnp.int32(count))

    @jax.jit
    def step(p, s):
        fwd = (lambda q: prune.ste_params(q, s)) if ste else (lambda q: q)
        g = jax.grad(lambda q: _loss(fwd(q), x, y))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    jax.block_until_ready(step(params, state))
    return lambda: step(params, state)


def chunks(n_rounds: int) -> None:
    """Per-step time of the reproduction's compiled chunks, scanned and unrolled."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiments import sparse_tasks, sparse_training

    conditions("sparse training: the reproduction's chunks, lax.scan loop vs unrolled")
    contenders, steps = {}, {}
    for run in sparse_training.CONFIGS["full"]["runs"][1:]:  # lenet-5, lm
        for unroll in (False, True):
            r = dataclasses.replace(run, unroll=unroll)
            task = sparse_tasks.make(r)
            params = task.init(jax.random.key(0))
            tx_state = sparse_tasks.optimizer(r).init(params)  # "dense" is the bare optimizer
            plan = task.batches(0, jax.random.key(0))[: r.chunk]
            chunk = sparse_training._compiled("dense", 0.9, r, task)
            jax.block_until_ready(chunk(params, tx_state, plan, task.consts))
            name = f"{r.model} ({'unrolled' if unroll else 'lax.scan'}, {r.chunk} steps)"
            contenders[name] = (lambda c=chunk, p=params, s=tx_state, b=plan, k=task.consts:
                                c(p, s, b, k))
            steps[name] = r.chunk
    times = rounds(contenders, n_rounds)
    table({n: [t / steps[n] for t in ts] for n, ts in times.items()},
          next(iter(contenders)), {n: "per step" for n in contenders})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--chunks", action="store_true",
                    help="the reproduction's LeNet-5 and LM chunks, scanned and unrolled")
    args = ap.parse_args()
    if args.chunks:
        chunks(min(args.rounds, 3))
        return
    conditions("sparse training: step cost of rigl / set_ / static / ste next to sparsify")
    params = _mlp(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((256, 784)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 256))
    erk = prune.erk(params, 0.9)
    adam = optax.adam(1e-3)
    key = jax.random.key(1)
    kw = dict(end_step=10_000, every=100, key=key)
    contenders = {
        "dense adam": _stepper(adam, params, x, y, 0),
        # sparsify on a step with no refresh (the schedule is constant after step 0)
        "sparsify (no refresh)": _stepper(
            prune.sparsify(adam, optax.constant_schedule(1.0), sparsity=erk), params, x, y, 5),
        "rigl (no update)": _stepper(prune.rigl(adam, 0.9, **kw), params, x, y, 5),
        "set_ (no update)": _stepper(prune.set_(adam, 0.9, **kw), params, x, y, 5),
        "static": _stepper(prune.static(adam, 0.9, key=key), params, x, y, 5),
        "ste (no refresh)": _stepper(prune.ste(adam, prune.constant(0.9), every=10_000),
                                     params, x, y, 5, ste=True),
        "rigl (mask update)": _stepper(prune.rigl(adam, 0.9, **kw), params, x, y, 100),
        "memcpy of the weights": memcpy(jax.tree.leaves(params)),
    }
    times = rounds(contenders, args.rounds)
    table(times, "sparsify (no refresh)",
          {"rigl (mask update)": "drop + grow, once every 100 steps",
           "memcpy of the weights": "one memory pass"})


if __name__ == "__main__":
    main()
