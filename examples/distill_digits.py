"""Distil a wide MLP teacher into a narrow MLP student on scikit-learn's digits.

Run from the repository root, with jaxrm importable (``pip install -e .``, or
``PYTHONPATH=.``) and scikit-learn installed for the data set:

    python examples/distill_digits.py

It trains one teacher (with dropout, as in Hinton et al.'s MNIST experiment)
on the training split, then trains the same narrow
student from the same initialization, with the same optimizer, batches and
number of steps, twice: once on the labels alone (cross entropy) and once on
``jaxrm.distill.kd_with_labels`` (labels plus the teacher's softened logits).
Students for all seeds train together under ``vmap``. It prints the test
accuracy of each run and the mean over seeds. The defaults (student width,
temperature, alpha, teacher dropout) were chosen with ``--validation``, which
holds out a quarter of the training split and never looks at the test split.
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrm import distill


class MLP(nnx.Module):
    def __init__(self, widths: list[int], *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])

    def __call__(self, x, *, dropout: float = 0.0, key=None):
        """Logits; with ``dropout > 0`` (training only) hidden units drop at that rate."""
        for i, layer in enumerate(self.layers[:-1]):
            x = nnx.relu(layer(x))
            if dropout > 0:
                keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1 - dropout, x.shape)
                x = jnp.where(keep, x / (1 - dropout), 0)
        return self.layers[-1](x)


def load_digits(seed: int = 0):
    """Pixels scaled to [0, 1]; a stratified 70/30 train/test split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y.astype(np.int32), test_size=0.3, random_state=seed, stratify=y)


def init_models(widths: list[int], seeds: list[int]):
    """One MLP per seed; returns the graph and the parameters stacked on a seed axis."""
    states = [nnx.split(MLP(widths, rngs=nnx.Rngs(s)))[1] for s in seeds]
    graphdef = nnx.split(MLP(widths, rngs=nnx.Rngs(0)))[0]
    return graphdef, jax.tree.map(lambda *a: jnp.stack(a), *states)


def train(graphdef, params, x, y, teacher, *, loss, seeds, epochs, batch, lr, dropout=0.0,
          mixup=False):
    """Adam on shuffled minibatches, every seed at once (``vmap``), epochs and steps scanned.

    ``loss(logits, teacher_logits, targets)`` returns per-example values, where
    ``targets`` are one-hot labels and ``teacher_logits`` is ``teacher(inputs)``
    on the same batch (``None`` without a teacher). With ``mixup``, each batch
    is replaced by convex combinations of its examples and their targets
    (Zhang et al. 2018), the same for every loss.
    """
    onehot = jax.nn.one_hot(y, 10)
    opt = optax.adam(lr)

    def batch_loss(p, xb, yb, key):
        logits = nnx.merge(graphdef, p)(xb, dropout=dropout, key=key)
        return loss(logits, None if teacher is None else teacher(xb), yb).mean()

    def step(carry, idx_key):
        p, opt_state = carry
        idx, key = idx_key
        xb, yb = x[idx], onehot[idx]
        if mixup:
            k_lam, k_perm, key = jax.random.split(key, 3)
            lam = jax.random.uniform(k_lam, (idx.shape[0], 1))
            perm = jax.random.permutation(k_perm, idx.shape[0])
            xb = lam * xb + (1 - lam) * xb[perm]
            yb = lam * yb + (1 - lam) * yb[perm]
        grads = jax.grad(batch_loss)(p, xb, yb, key)
        updates, opt_state = opt.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    def epoch(carry, key):
        steps = x.shape[0] // batch
        k_order, k_drop = jax.random.split(key)
        order = jax.random.permutation(k_order, x.shape[0])[: steps * batch]
        batches = (order.reshape(steps, batch), jax.random.split(k_drop, steps))
        return jax.lax.scan(step, carry, batches)[0], None

    def run(p, key):
        (p, _), _ = jax.lax.scan(epoch, (p, opt.init(p)), jax.random.split(key, epochs))
        return p

    keys = jnp.stack([jax.random.key(s) for s in seeds])
    return jax.jit(jax.vmap(run))(params, keys)


def accuracy(graphdef, params, x, y) -> np.ndarray:
    """Test accuracy per seed."""
    logits = jax.vmap(lambda p: nnx.merge(graphdef, p)(x))(params)
    return np.asarray(jnp.mean(jnp.argmax(logits, -1) == y, axis=-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--teacher-width", type=int, default=256)
    ap.add_argument("--teacher-epochs", type=int, default=100)
    ap.add_argument("--teacher-dropout", type=float, default=0.5)
    ap.add_argument("--student-width", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=60, help="student epochs")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3, help="student learning rate")
    ap.add_argument("--temperature", type=float, default=20.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split")
    ap.add_argument("--mixup", action=argparse.BooleanOptionalAction, default=False,
                    help="train both students on mixup batches")
    ap.add_argument(
        "--validation", action="store_true",
        help="train on 75%% of the training split and report accuracy on the other 25%% "
        "(how the defaults were chosen) instead of the test split",
    )
    args = ap.parse_args()
    start = time.perf_counter()

    x_tr, x_te, y_tr, y_te = load_digits(args.split_seed)
    if args.validation:
        from sklearn.model_selection import train_test_split

        x_tr, x_te, y_tr, y_te = train_test_split(
            x_tr, y_tr, test_size=0.25, random_state=1, stratify=y_tr
        )
    x_tr, x_te, y_tr, y_te = map(jnp.asarray, (x_tr, x_te, y_tr, y_te))
    split = "validation" if args.validation else "test"
    classes = 10

    def labels_only(logits, _teacher_logits, targets):
        return optax.softmax_cross_entropy(logits, targets)

    def with_teacher(logits, teacher_logits, targets):
        return distill.kd_with_labels(
            logits, teacher_logits, targets, alpha=args.alpha, temperature=args.temperature
        )

    tw = args.teacher_width
    t_graph, t_params = init_models([64, tw, tw, classes], [1000])
    t_params = train(t_graph, t_params, x_tr, y_tr, None, loss=labels_only, seeds=[1000],
                     epochs=args.teacher_epochs, batch=args.batch, lr=1e-3,
                     dropout=args.teacher_dropout)
    teacher_acc = accuracy(t_graph, t_params, x_te, y_te)[0]
    teacher = nnx.merge(t_graph, jax.tree.map(lambda a: a[0], t_params))

    # How much "dark knowledge" there is: on its own training examples a teacher
    # that fits them is nearly one-hot.
    confidence = float(jnp.mean(jnp.max(jax.nn.softmax(teacher(x_tr)), -1)))
    print(f"teacher 64-{tw}-{tw}-10 (dropout {args.teacher_dropout}): {split} accuracy "
          f"{teacher_acc:.4f}; mean top probability on its training examples {confidence:.4f}")

    seeds = list(range(args.seeds))
    widths = [64, args.student_width, classes]
    s_graph, s_init = init_models(widths, seeds)
    common = dict(seeds=seeds, epochs=args.epochs, batch=args.batch, lr=args.lr,
                  mixup=args.mixup)
    base = train(s_graph, s_init, x_tr, y_tr, None, loss=labels_only, **common)
    kd = train(s_graph, s_init, x_tr, y_tr, teacher, loss=with_teacher, **common)
    acc = np.stack([accuracy(s_graph, base, x_te, y_te), accuracy(s_graph, kd, x_te, y_te)], 1)
    for seed, (a, b) in zip(seeds, acc):
        print(f"seed {seed}: student 64-{args.student_width}-10 {split} accuracy, "
              f"labels only {a:.4f}  "
              f"distilled {b:.4f}")
    mean, std = acc.mean(0), acc.std(0)
    wins = int(np.sum(acc[:, 1] > acc[:, 0]))
    print(f"{split} accuracy, mean over {len(seeds)} seeds: "
          f"labels only {mean[0]:.4f} ± {std[0]:.4f}, "
          f"distilled (T={args.temperature}, alpha={args.alpha}) {mean[1]:.4f} ± {std[1]:.4f}; "
          f"distilled better on {wins}/{len(seeds)} seeds")
    print(f"total time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
