"""Distil a wide MLP teacher into a narrow MLP student on scikit-learn's digits.

Run from the repository root, with jaxrm importable (``pip install -e .``, or
``PYTHONPATH=.``) and scikit-learn installed for the data set:

    python examples/distill_digits.py

The semi-supervised setting of distillation: of a stratified 70/30 train/test
split, only a fraction (``--labeled``, default 10 %) of the training split
keeps its labels; the rest are unlabeled images. A wide teacher (64-256-256-10,
dropout) trains on the labeled images. Then the same narrow student
(64-32-10) trains twice per seed, from the same initialization, with the same
optimizer, steps, minibatches and augmentations (random shifts of the 8x8
image by up to one pixel and Gaussian pixel noise):

* labels only: cross entropy on every input in the batch whose label is known;
* distilled: ``jaxrm.distill.kd_with_labels`` on the same inputs, i.e. the
  same cross entropy plus the teacher's softened logits on every input,
  labeled or not (an unlabeled input gets the label -1, which has no hard
  term).

Each step draws a batch from the labeled images and a batch from all training
images (the transfer set); both students see exactly these inputs. The
labels-only student cannot use the unlabeled ones; the distilled student
learns from the teacher there. ``--labeled 1`` is the fully supervised setting
(every input has its label; the teacher's soft targets are the only
difference). Students for all seeds train together under ``vmap``. The
defaults were chosen with ``--validation``, which holds out a quarter of the
training split as the evaluation set and never looks at the test split.
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

CLASSES = 10


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


def hide_labels(y, fraction: float, seed: int) -> np.ndarray:
    """A copy of ``y`` with all but a stratified ``fraction`` replaced by -1."""
    if fraction >= 1:
        return y.copy()
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    _, hidden = train_test_split(idx, train_size=fraction, random_state=seed, stratify=y)
    out = y.copy()
    out[hidden] = -1
    return out


def augment(key, x, *, shift: int, noise: float):
    """Shifts each 8x8 image by up to ``shift`` pixels (zero fill) and adds pixel noise."""
    n = x.shape[0]
    k_shift, k_noise = jax.random.split(key)
    img = jnp.pad(x.reshape(n, 8, 8), ((0, 0), (shift, shift), (shift, shift)))
    start = jax.random.randint(k_shift, (n, 2), 0, 2 * shift + 1)
    img = jax.vmap(lambda im, s: jax.lax.dynamic_slice(im, (s[0], s[1]), (8, 8)))(img, start)
    x = img.reshape(n, 64) + noise * jax.random.normal(k_noise, (n, 64))
    return jnp.clip(x, 0.0, 1.0)


def init_models(widths: list[int], seeds: list[int]):
    """One MLP per seed; returns the graph and the parameters stacked on a seed axis."""
    states = [nnx.split(MLP(widths, rngs=nnx.Rngs(s)))[1] for s in seeds]
    graphdef = nnx.split(MLP(widths, rngs=nnx.Rngs(0)))[0]
    return graphdef, jax.tree.map(lambda *a: jnp.stack(a), *states)


def train(graphdef, params, x, y, teacher, *, loss, seeds, steps, batch, transfer_batch, lr,
          weight_decay=0.0, dropout=0.0, shift=1, noise=0.1):
    """AdamW, every seed at once (``vmap``), steps scanned.

    ``x`` holds all training inputs and ``y`` their labels, -1 where unknown.
    Each step draws ``batch`` labeled inputs and ``transfer_batch`` inputs
    from all of ``x`` (the transfer set), augments them, and minimizes the mean of
    ``loss(logits, teacher_logits, labels)`` over both (``teacher_logits`` is
    ``teacher(inputs)``, ``None`` without a teacher). The draws and
    augmentations depend only on the seed, so two calls with the same seeds
    see the same inputs.
    """
    labeled = jnp.asarray(np.flatnonzero(np.asarray(y) >= 0))
    opt = optax.adamw(lr, weight_decay=weight_decay)

    def batch_loss(p, xb, yb, key):
        logits = nnx.merge(graphdef, p)(xb, dropout=dropout, key=key)
        return loss(logits, None if teacher is None else teacher(xb), yb).mean()

    def step(carry, key):
        p, opt_state = carry
        k_lab, k_all, k_aug, k_drop = jax.random.split(key, 4)
        idx = jnp.concatenate([
            labeled[jax.random.randint(k_lab, (batch,), 0, labeled.shape[0])],
            jax.random.randint(k_all, (transfer_batch,), 0, x.shape[0]),
        ])
        xb = augment(k_aug, x[idx], shift=shift, noise=noise)
        grads = jax.grad(batch_loss)(p, xb, y[idx], k_drop)
        updates, opt_state = opt.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    def run(p, key):
        (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), jax.random.split(key, steps))
        return p

    keys = jnp.stack([jax.random.key(s) for s in seeds])
    return jax.jit(jax.vmap(run))(params, keys)


def accuracy(graphdef, params, x, y) -> np.ndarray:
    """Accuracy per seed."""
    logits = jax.vmap(lambda p: nnx.merge(graphdef, p)(x))(params)
    return np.asarray(jnp.mean(jnp.argmax(logits, -1) == y, axis=-1))


def labels_only(logits, _teacher_logits, labels):
    """Cross entropy where the label is known (>= 0), 0 elsewhere."""
    known = labels >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(known, labels, 0))
    return jnp.where(known, ce, 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--labeled", type=float, default=0.1,
                    help="fraction of the training split that keeps its labels")
    ap.add_argument("--teacher-width", type=int, default=256)
    ap.add_argument("--teacher-steps", type=int, default=2000)
    ap.add_argument("--teacher-dropout", type=float, default=0.5)
    ap.add_argument("--student-width", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2000, help="student steps")
    ap.add_argument("--batch", type=int, default=32, help="labeled inputs per step")
    ap.add_argument("--transfer-batch", type=int, default=128,
                    help="inputs per step drawn from all training images")
    ap.add_argument("--lr", type=float, default=3e-3, help="student learning rate")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--shift", type=int, default=1, help="largest random shift in pixels")
    ap.add_argument("--noise", type=float, default=0.1, help="std of Gaussian pixel noise")
    ap.add_argument("--split-seed", type=int, default=0,
                    help="seed of the train/test split and of which labels are kept")
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
    y_known = hide_labels(y_tr, args.labeled, args.split_seed)
    x_tr, x_te, y_known, y_te = map(jnp.asarray, (x_tr, x_te, y_known, y_te))
    split = "validation" if args.validation else "test"
    n_lab = int(jnp.sum(y_known >= 0))
    print(f"{n_lab} labeled and {x_tr.shape[0] - n_lab} unlabeled training images, "
          f"{x_te.shape[0]} {split} images")
    aug = dict(batch=args.batch, transfer_batch=args.transfer_batch, shift=args.shift,
               noise=args.noise, weight_decay=args.weight_decay)

    def with_teacher(logits, teacher_logits, labels):
        # Labels of -1 (unknown) are outside [0, classes): no hard term there.
        return distill.kd_with_labels(
            logits, teacher_logits, labels, alpha=args.alpha, temperature=args.temperature
        )

    tw = args.teacher_width
    t_graph, t_params = init_models([64, tw, tw, CLASSES], [1000])
    t_params = train(t_graph, t_params, x_tr, y_known, None, loss=labels_only, seeds=[1000],
                     steps=args.teacher_steps, lr=1e-3, dropout=args.teacher_dropout, **aug)
    teacher_acc = accuracy(t_graph, t_params, x_te, y_te)[0]
    teacher = nnx.merge(t_graph, jax.tree.map(lambda a: a[0], t_params))
    unl = y_known < 0
    conf = jnp.max(jax.nn.softmax(teacher(x_tr)), -1)
    print(f"teacher 64-{tw}-{tw}-10 (dropout {args.teacher_dropout}): {split} accuracy "
          f"{teacher_acc:.4f}; mean top probability on labeled training images "
          f"{float(jnp.mean(conf[~unl])):.4f}"
          + (f", on unlabeled {float(jnp.mean(conf[unl])):.4f}" if bool(unl.any()) else ""))

    seeds = list(range(args.seeds))
    s_graph, s_init = init_models([64, args.student_width, CLASSES], seeds)
    common = dict(seeds=seeds, steps=args.steps, lr=args.lr, **aug)
    base = train(s_graph, s_init, x_tr, y_known, None, loss=labels_only, **common)
    kd = train(s_graph, s_init, x_tr, y_known, teacher, loss=with_teacher, **common)
    acc = np.stack([accuracy(s_graph, base, x_te, y_te), accuracy(s_graph, kd, x_te, y_te)], 1)
    for seed, (a, b) in zip(seeds, acc):
        print(f"seed {seed}: student 64-{args.student_width}-10 {split} accuracy, "
              f"labels only {a:.4f}  distilled {b:.4f}")
    mean, std = acc.mean(0), acc.std(0)
    wins = int(np.sum(acc[:, 1] > acc[:, 0]))
    print(f"{split} accuracy, mean over {len(seeds)} seeds: "
          f"labels only {mean[0]:.4f} ± {std[0]:.4f}, "
          f"distilled (T={args.temperature}, alpha={args.alpha}) {mean[1]:.4f} ± {std[1]:.4f}; "
          f"distilled better on {wins}/{len(seeds)} seeds")
    print(f"total time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
