"""Prune half of a CNN's channels on scikit-learn's digits, shrink it, fine-tune it.

Run from the repository root, with jaxrm importable (``pip install -e .``, or
``PYTHONPATH=.``) and scikit-learn installed for the data set:

    python examples/shrink_digits.py

A Linen CNN (conv 32 - conv 64 - max-pool - dense 128 - 10, on the 8x8 images
of a stratified 70/30 train/test split) trains with Adam. From step
``--begin`` to ``--end`` the fraction of channels removed from every coupled
group (both convs and the hidden dense layer) rises along
``prune.polynomial`` to ``--sparsity`` (0.5): every ``--every`` steps the
channels are scored (``prune.group_scores``, L2 over each group's kernels),
the lowest are chosen (``prune.group_keep``), and ``prune.group_masks``
silences them (kernel columns and rows, biases) until the end of training.
Then ``prune.shrink`` removes them for real, the model is rebuilt at the
sizes it reports, and the small dense model is fine-tuned.

Three models are compared on the test split, each over ``--seeds`` seeds
with the same number of training steps in total: the dense CNN, the pruned
and shrunk one (before and after fine-tuning), and a CNN of the shrunk sizes
trained from scratch. The script also prints the CPU latency of the jitted
forward pass on the test split (dense vs shrunk, interleaved rounds, min and
median) and ``os.getloadavg()``.
"""

from __future__ import annotations

import argparse
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrm import prune
from jaxrm import tree as jtree


class CNN(nn.Module):
    c1: int = 32
    c2: int = 64
    hidden: int = 128

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.c1, (3, 3))(x))
        x = nn.max_pool(nn.relu(nn.Conv(self.c2, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def data(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    return train_test_split(x, y.astype(np.int32), test_size=0.3, stratify=y, random_state=seed)


def loss_fn(model, params, x, y):
    logits = model.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(model, params, x, y) -> float:
    return float(jnp.mean(jnp.argmax(jax.jit(model.apply)(params, x), -1) == y))


def train(model, params, x, y, steps, *, seed, lr, batch, prune_at=None):
    """Adam on minibatches; ``prune_at(step, params) -> masks or None`` silences channels."""
    opt = optax.adam(lr)
    state = opt.init(params)

    @jax.jit
    def step(params, state, masks, xb, yb):
        grads = jax.grad(lambda p: loss_fn(model, p, xb, yb))(params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        # Silenced channels stay exactly zero (masks is None until pruning starts).
        return (params if masks is None else prune.apply(params, masks)), state

    rng = np.random.default_rng(seed)
    masks = None
    for t in range(steps):
        idx = rng.integers(0, len(x), batch)
        params, state = step(params, state, masks, x[idx], y[idx])
        if prune_at is not None:
            new = prune_at(t, params)
            if new is not None:
                masks = new
                params = prune.apply(params, masks)
    return params


def latency(fns: dict, rounds: int = 7, per_round: int = 20) -> dict:
    times = {n: [] for n in fns}
    for fn in fns.values():
        jax.block_until_ready(fn())
    for _ in range(rounds):
        for n, fn in fns.items():
            start = time.perf_counter()
            for _ in range(per_round):
                jax.block_until_ready(fn())
            times[n].append((time.perf_counter() - start) / per_round)
    return {n: (min(t) * 1e3, float(np.median(t)) * 1e3) for n, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps before shrinking")
    parser.add_argument("--finetune", type=int, default=300, help="steps after shrinking")
    parser.add_argument("--begin", type=int, default=200)
    parser.add_argument("--end", type=int, default=700)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    print(f"load average {tuple(round(v, 2) for v in os.getloadavg())}")
    x_tr, x_te, y_tr, y_te = data()
    total = args.steps + args.finetune
    schedule = prune.polynomial(args.sparsity, args.begin, args.end, every=args.every)
    dense, pruned, tuned, scratch = [], [], [], []
    for seed in range(args.seeds):
        model = CNN()
        init = model.init(jax.random.key(seed), x_tr[:1])
        gs = prune.groups(model.apply, init, x_tr[:1])

        def prune_at(t, params, gs=gs):
            if t < args.begin or t > args.end or (t - args.begin) % args.every:
                return None
            keep = prune.group_keep(prune.group_scores(params, gs), float(schedule(t)))
            prune_at.keep = keep
            return prune.group_masks(params, gs, keep)

        kw = dict(seed=seed, lr=args.lr, batch=args.batch)
        dense_params = train(model, init, x_tr, y_tr, total, **kw)
        dense.append(accuracy(model, dense_params, x_te, y_te))
        params = train(model, init, x_tr, y_tr, args.steps, prune_at=prune_at, **kw)
        small, sizes, _ = prune.shrink(params, gs, prune_at.keep)
        small_model = CNN(sizes["params/Conv_0"][0], sizes["params/Conv_1"][0],
                          sizes["params/Dense_0"][0])
        # Shrinking is exact: the small model computes what the silenced one did.
        np.testing.assert_allclose(jax.jit(small_model.apply)(small, x_te),
                                   jax.jit(model.apply)(params, x_te), rtol=1e-4, atol=1e-4)
        pruned.append(accuracy(small_model, small, x_te, y_te))
        small = train(small_model, small, x_tr, y_tr, args.finetune, **{**kw, "lr": args.lr / 4})
        tuned.append(accuracy(small_model, small, x_te, y_te))
        fresh = small_model.init(jax.random.key(100 + seed), x_tr[:1])
        scratch.append(accuracy(small_model, train(small_model, fresh, x_tr, y_tr, total, **kw),
                                x_te, y_te))
        print(f"seed {seed}: dense {dense[-1]:.4f}  pruned {pruned[-1]:.4f}  "
              f"fine-tuned {tuned[-1]:.4f}  scratch {scratch[-1]:.4f}  sizes "
              f"{ {k: v[0] for k, v in sizes.items() if k.startswith('params/')} }")
    fmt = lambda a: f"{np.mean(a):.4f} +- {np.std(a):.4f}"
    print(f"\ntest accuracy over {args.seeds} seeds ({total} training steps each):")
    print(f"  dense CNN (32-64-128)                {fmt(dense)}")
    print(f"  pruned to {args.sparsity:.0%}, shrunk, no fine-tune  {fmt(pruned)}")
    print(f"  pruned, shrunk, fine-tuned           {fmt(tuned)}")
    print(f"  small size from scratch              {fmt(scratch)}")
    dense_fn, small_fn = jax.jit(model.apply), jax.jit(small_model.apply)
    xt = jnp.asarray(x_te)
    t = latency({"dense": lambda: dense_fn(dense_params, xt),
                 "shrunk": lambda: small_fn(small, xt)})
    print(f"forward on the {len(x_te)} test images (min/median ms): dense "
          f"{t['dense'][0]:.2f}/{t['dense'][1]:.2f}, shrunk {t['shrunk'][0]:.2f}/"
          f"{t['shrunk'][1]:.2f} ({t['dense'][1] / t['shrunk'][1]:.2f}x); parameters "
          f"{jtree.count(dense_params, jtree.arrays)} -> {jtree.count(small, jtree.arrays)}")
    print(f"load average {tuple(round(v, 2) for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
