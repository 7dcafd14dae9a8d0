"""Sparse training from scratch on MNIST: dense, static, SET, RigL, STE and gradual pruning.

Usage::

    python -m experiments.sparse_training --config full

Every method trains LeNet-300-100 and LeNet-5 for the same number of steps
(same data order, optimizer and learning-rate schedule per seed) at 90%, 95%
and 98% sparsity of the weight kernels, spread over the layers by ERK:

* ``dense``: no pruning (the reference; one run per seed).
* ``static``: a random ERK mask fixed at init ([jaxrm.prune.static][]).
* ``set``: SET, drop by magnitude, regrow at random ([jaxrm.prune.set_][]).
* ``rigl``: RigL, drop by magnitude, regrow by |gradient| ([jaxrm.prune.rigl][]).
* ``ste``: straight-through magnitude pruning ([jaxrm.prune.ste][]) on the
  gradual schedule below; the test error is that of the masked weights.
* ``gmp``: gradual magnitude pruning (Zhu & Gupta 2017) with
  [jaxrm.prune.sparsify][] and the cubic [jaxrm.prune.polynomial][] ramp.

Writes ``results.json``, ``table.md`` and ``accuracy_vs_sparsity.png`` to
``experiments/results/sparse-training/`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import data as mnist
from experiments import models, report, train
from experiments.deep_compression import _versions
from jaxrm import prune

RESULTS = Path(__file__).resolve().parent / "results" / "sparse-training"
METHODS = ("dense", "static", "set", "rigl", "ste", "gmp")


@dataclasses.dataclass(frozen=True)
class Run:
    """One model's training budget."""

    model: str
    steps: int
    batch: int = 100
    lr: float = 0.05  # SGD with momentum 0.9, cosine decay to 0 over ``steps``
    every: int = 100  # RigL/SET mask updates, and the gradual schedule's pruning frequency
    chunk: int = 100  # steps per compiled call (1: a jitted step per call, for convolutions)


CONFIGS = {
    # Sized for a shared machine under heavy load (load average 10-14 on 2 cores when
    # it was run, one XLA thread): a LeNet-300-100 step took 5-10 ms there, a LeNet-5
    # step over ten times that, so LeNet-5 trains for far fewer steps, with smaller
    # batches and more frequent mask updates. Results are written after every run, so
    # a run stopped early still leaves the finished models' rows.
    "full": dict(runs=(Run("lenet-300-100", 600, every=50), Run("lenet-5", 60, batch=50,
                                                                 every=10, chunk=1)),
                 sparsities=(0.9, 0.95, 0.98), seeds=3),
    "tiny": dict(runs=(Run("lenet-300-100", 20, batch=32, every=5, chunk=10),),
                 sparsities=(0.9,), seeds=1, methods=("dense", "static", "rigl")),
}


def _transform(method: str, s: float, run: Run, params, key) -> optax.GradientTransformation:
    inner = optax.sgd(optax.cosine_decay_schedule(run.lr, run.steps), momentum=0.9)
    end = int(0.75 * run.steps)  # RigL's T_end, and the end of the gradual ramp
    if method == "dense":
        return inner
    if method == "static":
        return prune.static(inner, s, key=key)
    if method in ("set", "rigl"):
        make = prune.rigl if method == "rigl" else prune.set_
        return make(inner, s, end_step=end, every=run.every, key=key)
    begin = int(0.1 * run.steps)
    ramp = prune.polynomial(s, begin, end, every=run.every)
    # Per-leaf ERK targets times a scale that rises (cubically) from 0 to exactly 1.
    targets = prune.erk(params, s)
    scale = lambda t: ramp(t) / jnp.float32(s)
    if method == "ste":
        return prune.ste(inner, scale, sparsity=targets)
    return prune.sparsify(inner, scale, sparsity=targets, every=run.every)


def _forward(method: str):
    return prune.ste_params if method == "ste" else (lambda p, state: p)


@functools.cache
def _compiled(method: str, s: float, run: Run):
    """A jitted chunk of ``run.chunk`` steps, compiled once for every seed.

    Seeds differ only in the params, the state (which holds RigL/SET's key)
    and the data order, which are all arguments.
    """
    apply = models.apply_fn(run.model)
    params = models.init_params(run.model, jax.random.key(0))
    tx = _transform(method, s, run, params, jax.random.key(0))
    forward = _forward(method)

    def loss_fn(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

    def step(carry, idx, images, labels):
        p, st = carry
        x = images[idx].astype(jnp.float32)[..., None] * (1.0 / 256.0)
        g = jax.grad(lambda q: loss_fn(forward(q, st), x, labels[idx]))(p)
        u, st = tx.update(g, st, p)
        return (optax.apply_updates(p, u), st), None

    @jax.jit
    def chunk(p, st, idx, images, labels):
        (p, st), _ = jax.lax.scan(lambda c, i: step(c, i, images, labels), (p, st), idx)
        return p, st

    return chunk


def _train(method: str, s: float, run: Run, seed: int, data: train.Data) -> dict:
    k_init, k_mask, k_data = jax.random.split(jax.random.key(seed), 3)
    params = models.init_params(run.model, k_init)
    state = _transform(method, s, run, params, k_mask).init(params)
    if method in ("static", "set", "rigl"):
        params = prune.apply(params, prune.masks_of(state))  # the first forward pass is sparse
    n = data.x.shape[0]
    epochs = -(-run.steps * run.batch // n)
    order = jnp.concatenate([jax.random.permutation(jax.random.fold_in(k_data, e), n)
                             for e in range(epochs)])[: run.steps * run.batch]
    order = order.reshape(-1, run.chunk, run.batch)
    t0 = time.perf_counter()
    chunk = _compiled(method, s, run)
    for i in range(order.shape[0]):
        params, state = chunk(params, state, order[i], data.x, data.y)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - t0
    final = _forward(method)(params, state)
    w = [np.asarray(x) for x in jax.tree.leaves(final) if np.ndim(x) >= 2]
    density = sum(np.count_nonzero(a) for a in w) / sum(a.size for a in w)
    return {"method": method, "model": run.model, "sparsity": s, "seed": seed,
            "error": train.error_rate(models.apply_fn(run.model), final, data),
            "density": density, "train_seconds": seconds, "steps": run.steps}


def _summary(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], r["sparsity"]), []).append(r)
    out = []
    for (model, method, s), rs in groups.items():
        acc = [100 * (1 - r["error"]) for r in rs]
        out.append({"model": model, "method": method, "sparsity": s, "n": len(rs),
                    "accuracy_mean": statistics.fmean(acc),
                    "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "density_mean": statistics.fmean(r["density"] for r in rs),
                    "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in rs)})
    return out


def _table(results: dict) -> str:
    summ = results["summary"]
    lines = ["# Sparse training from scratch on MNIST", "",
             f"Command: `{results['command']}` ({results['seeds']} seeds; test accuracy, "
             "mean ± std, in %). Same steps, data order and optimizer for every method; "
             "ERK sparsity over the weight kernels.", ""]
    for run in results["runs_config"]:
        model = run["model"]
        rows = [r for r in summ if r["model"] == model]
        dense = [r for r in rows if r["method"] == "dense"]
        sps = sorted({r["sparsity"] for r in rows if r["method"] != "dense"})
        lines += [f"## {model} ({run['steps']} steps of batch {run['batch']})", "",
                  "| method | " + " | ".join(f"{100 * s:g}% sparse" for s in sps) + " |",
                  "|---|" + "---|" * len(sps)]
        if dense:
            d = dense[0]
            lines.append(f"| dense | {d['accuracy_mean']:.2f} ± {d['accuracy_std']:.2f} (0%)"
                         + " |" * len(sps))
        for method in METHODS[1:]:
            cells = []
            for s in sps:
                hit = [r for r in rows if r["method"] == method and r["sparsity"] == s]
                cells.append(f"{hit[0]['accuracy_mean']:.2f} ± {hit[0]['accuracy_std']:.2f}"
                             if hit else "")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if not results.get("complete", True):
        lines += ["**Incomplete**: the run was stopped before it finished; "
                  "a missing cell or model had not run yet.", ""]
    lines += [f"Total wall time {results['total_seconds'] / 60:.1f} min; load average at the "
              f"start {results['load_start']}, at the end {results['load_end']}.", ""]
    return "\n".join(lines)


def _plot(path: Path, results: dict) -> None:
    plt = report._plt()
    runs = results["runs_config"]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        rows = [r for r in results["summary"] if r["model"] == run["model"]]
        for method in METHODS[1:]:
            pts = sorted((r["sparsity"], r["accuracy_mean"], r["accuracy_std"])
                         for r in rows if r["method"] == method)
            if pts:
                s, m, e = zip(*pts)
                ax.errorbar([100 * x for x in s], m, yerr=e, marker="o", capsize=3, label=method)
        for r in rows:
            if r["method"] == "dense":
                ax.axhline(r["accuracy_mean"], color="k", ls="--", lw=1, label="dense")
        ax.set(title=run["model"], xlabel="sparsity (%)", ylabel="test accuracy (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bar(total: int, quiet: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the experiments extra
        tqdm = None
    if tqdm is None or quiet:
        return None
    return tqdm(total=total, desc="sparse training", unit="run", file=sys.stderr)


def main(argv: list[str] | None = None) -> dict:
    """Runs every method, model, sparsity and seed; returns the results (also written)."""
    ap = argparse.ArgumentParser(prog="python -m experiments.sparse_training",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="full")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--data-dir", default=None, help="directory with the four MNIST IDX files")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    cfg = CONFIGS[args.config]
    out = args.out if args.out is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    t_start, load_start = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    data = train.device_data(mnist.load_mnist(args.data_dir, quiet=args.quiet))

    jobs, methods = [], cfg.get("methods", METHODS)
    for run in cfg["runs"]:  # one model after the other
        jobs += [(run, "dense", 0.0, seed) for seed in range(cfg["seeds"])]
        jobs += [(run, m, s, seed) for s in cfg["sparsities"] for m in methods[1:]
                 for seed in range(cfg["seeds"])]
    bar, rows = _bar(len(jobs), args.quiet), []
    command = "python -m experiments.sparse_training " + " ".join(
        argv if argv is not None else sys.argv[1:])
    for i, (run, method, s, seed) in enumerate(jobs):
        r = _train(method, s, run, seed, data)
        rows.append(r)
        if bar is not None:
            bar.set_postfix_str(f"{run.model} {method} {s:g} seed {seed}: "
                                f"{100 * (1 - r['error']):.2f}%")
            bar.update(1)
        done = i + 1 == len(jobs)
        results = {
            "command": command, "config": args.config, "complete": done,
            "runs_config": [dataclasses.asdict(x) for x in cfg["runs"]
                            if any(row["model"] == x.model for row in rows)],
            "sparsities": list(cfg["sparsities"]), "seeds": cfg["seeds"],
            "summary": _summary(rows), "runs": rows,
            "total_seconds": time.perf_counter() - t_start, "load_start": load_start,
            "load_end": [round(x, 2) for x in os.getloadavg()], "versions": _versions(),
        }
        # Written after every run, so a run stopped early keeps what it finished.
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / "table.md").write_text(_table(results))
        if not args.no_plots and (done or jobs[i + 1][0] != run):
            _plot(out / "accuracy_vs_sparsity.png", results)
    if bar is not None:
        bar.close()
    return results


if __name__ == "__main__":
    main()
