"""Sparse training from scratch on MNIST: dense, static, SET, RigL, STE and gradual pruning.

Usage::

    python -m experiments.sparse_training --config full                  # every model
    python -m experiments.sparse_training --config full --models lenet-5  # one, merged

Every method trains LeNet-300-100 and LeNet-5 (and a small byte-level
Transformer LM, ``lm``, see ``experiments/sparse_tasks.py``) for the same
number of steps (same data order, optimizer and learning-rate schedule per
seed) at 90%, 95% and 98% sparsity of the weight kernels, spread over the
layers by ERK:

* ``dense``: no pruning (the reference; one run per seed).
* ``static``: a random ERK mask fixed at init ([jaxrm.prune.static][]).
* ``set``: SET, drop by magnitude, regrow at random ([jaxrm.prune.set_][]).
* ``rigl``: RigL, drop by magnitude, regrow by |gradient| ([jaxrm.prune.rigl][]).
* ``ste``: straight-through magnitude pruning ([jaxrm.prune.ste][]) on the
  gradual schedule below; the test error is that of the masked weights.
* ``gmp``: gradual magnitude pruning (Zhu & Gupta 2017) with
  [jaxrm.prune.sparsify][] and the cubic [jaxrm.prune.polynomial][] ramp.

Writes ``results.json``, ``table.md`` and ``accuracy_vs_sparsity.png`` to
``experiments/results/sparse-training/`` unless ``--out`` says otherwise,
atomically, after every run. ``--models`` runs some models only: their rows
replace that model's rows of an existing ``results.json`` (rows are keyed by
model, method, sparsity and seed), the others are kept, and the table, plot
and ``complete`` flag are made again from all rows. Each model records its
own command, wall time and load averages.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fcntl
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import kjv, sparse_report, sparse_tasks
from experiments.deep_compression import _versions
from experiments.sparse_tasks import LM, Run
from jaxrm import prune
from jaxrm import tree as jtree

__all__ = ["CONFIGS", "LM", "METHODS", "Run", "main"]

RESULTS = Path(__file__).resolve().parent / "results" / "sparse-training"
METHODS = sparse_report.METHODS

CONFIGS = {
    # LeNet-300-100's block ran at load 8-16. LeNet-5 and the LM are sized for about 25
    # minutes each on this shared 2-core machine at load 5-6 (one XLA thread), where a
    # LeNet-5 step at batch 100 takes about 0.2 s (their three seeds ran with the
    # machine to itself, the two models side by side); see
    # docs/sparse_training.md for the measured step costs.
    "full": dict(runs=(Run("lenet-300-100", 600, every=50),
                       Run("lenet-5", 120, every=15, chunk=10, unroll=True, seeds=3),
                       Run("lm", 150, batch=16, lr=3e-3, every=15, chunk=15,
                           optimizer="adamw", lm=LM(), seeds=3)),
                 sparsities=(0.9, 0.95, 0.98)),
    "tiny": dict(runs=(Run("lenet-300-100", 20, batch=32, every=5, chunk=10, seeds=1),
                       Run("lm", 12, batch=4, lr=3e-3, every=4, chunk=4, optimizer="adamw",
                           lm=LM(d_model=32, heads=2, layers=2, context=16, eval_windows=8),
                           seeds=1)),
                 sparsities=(0.9,), methods=("dense", "static", "rigl")),
}


def _transform(method: str, s: float, run: Run, targets, key,
               task: sparse_tasks.Task) -> optax.GradientTransformation:
    inner = sparse_tasks.optimizer(run)
    end = int(0.75 * run.steps)  # RigL's T_end, and the end of the gradual ramp
    kw = dict(where=task.where, stacked=task.stacked)
    if method == "dense":
        return inner
    if method == "static":
        return prune.static(inner, targets, key=key, **kw)
    if method in ("set", "rigl"):
        make = prune.rigl if method == "rigl" else prune.set_
        return make(inner, targets, end_step=end, every=run.every, key=key, **kw)
    begin = int(0.1 * run.steps)
    ramp = prune.polynomial(s, begin, end, every=run.every)
    # Per-leaf ERK targets times a scale that rises (cubically) from 0 to exactly 1.
    scale = lambda t: ramp(t) / jnp.float32(s)
    if method == "ste":
        return prune.ste(inner, scale, sparsity=targets, **kw)
    return prune.sparsify(inner, scale, sparsity=targets, every=run.every, **kw)


def _forward(method: str):
    return prune.ste_params if method == "ste" else (lambda p, state: p)


_COMPILED: dict = {}


def _compiled(method: str, s: float, run: Run, task: sparse_tasks.Task):
    """A jitted chunk of ``run.chunk`` steps, compiled once for every seed.

    Seeds differ only in the params, the state (which holds RigL/SET's key)
    and the batch plan, which are all arguments.
    """
    key = (method, s, task.key)
    if key in _COMPILED:
        return _COMPILED[key]
    params = task.init(jax.random.key(0))
    tx = _transform(method, s, run, task.targets(params, s), jax.random.key(0), task)
    forward = _forward(method)

    def step(carry, batch, consts):
        p, st = carry
        g = jax.grad(lambda q: task.loss(forward(q, st), batch, consts))(p)
        u, st = tx.update(g, st, p)
        return (optax.apply_updates(p, u), st), None

    @jax.jit
    def chunk(p, st, batches, consts):
        (p, st), _ = jax.lax.scan(lambda c, b: step(c, b, consts), (p, st), batches,
                                  unroll=run.unroll)
        return p, st

    _COMPILED[key] = chunk
    return chunk


def _train(method: str, s: float, run: Run, seed: int, task: sparse_tasks.Task) -> dict:
    k_init, k_mask, k_data = jax.random.split(jax.random.key(seed), 3)
    params = task.init(k_init)
    state = _transform(method, s, run, task.targets(params, s), k_mask, task).init(params)
    if method in ("static", "set", "rigl"):
        params = prune.apply(params, prune.masks_of(state))  # the first forward pass is sparse
    plan = task.batches(seed, k_data)
    plan = plan.reshape(-1, run.chunk, *plan.shape[1:])
    t0 = time.perf_counter()
    chunk = _compiled(method, s, run, task)
    for i in range(plan.shape[0]):
        params, state = chunk(params, state, plan[i], task.consts)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - t0
    final = _forward(method)(params, state)
    picked = jax.tree.leaves(jtree.select(final, task.where))  # the sparse leaves
    w = [np.asarray(x) for x, on in zip(jax.tree.leaves(final), picked) if on]
    density = sum(np.count_nonzero(a) for a in w) / sum(a.size for a in w)
    return {"method": method, "model": run.model, "sparsity": s, "seed": seed,
            **task.evaluate(final), "density": density, "train_seconds": seconds,
            "steps": run.steps}


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _previous(path: Path, config: str, cfg: dict) -> tuple[list[dict], dict]:
    """The rows and per-model records of an existing ``results.json`` (none if absent).

    Files written before per-model records existed (one command for all
    models) get a record per model from their top-level command and timing,
    and their run settings the defaults of fields added since.
    """
    if not path.exists():
        return [], {}
    old = json.loads(path.read_text())
    if old.get("config") != config:
        raise ValueError(f"{path} holds config {old.get('config')!r}, not {config!r}: "
                         "pass another --out")
    records = old.get("models")
    if records is None:
        records = {}
        for run in old["runs_config"]:
            model = run["model"]
            have = {(r["model"], r["method"], r["sparsity"], r["seed"]) for r in old["runs"]}
            records[model] = {
                "command": old["command"],
                "run": {**dataclasses.asdict(Run(model, run["steps"])), **run},
                "wall_seconds": old["total_seconds"], "load_start": old["load_start"],
                "load_end": old["load_end"],
                "n_runs": sum(r["model"] == model for r in old["runs"]),
                "finished": _expected(cfg, model) <= have, "versions": old.get("versions")}
    return old["runs"], records


def _jobs(cfg: dict, run: Run) -> list[tuple[str, float, int]]:
    """(method, sparsity, seed) of every run of ``run``'s model, dense first."""
    methods = cfg.get("methods", METHODS)
    jobs = [("dense", 0.0, seed) for seed in range(run.seeds)]
    return jobs + [(m, s, seed) for s in cfg["sparsities"] for m in methods[1:]
                   for seed in range(run.seeds)]


def _expected(cfg: dict, model: str) -> set:
    run = next(r for r in cfg["runs"] if r.model == model)
    return {(model, *job) for job in _jobs(cfg, run)}


def _results(config: str, cfg: dict, rows: list[dict], records: dict) -> dict:
    """Everything written, made again from all rows and per-model records."""
    have = {(r["model"], r["method"], r["sparsity"], r["seed"]) for r in rows}
    complete = all(run.model in records and records[run.model]["run"] == dataclasses.asdict(run)
                   and records[run.model].get("finished", True)
                   and _expected(cfg, run.model) <= have for run in cfg["runs"])
    order = [run.model for run in cfg["runs"]]
    rank = lambda m: (order.index(m) if m in order else len(order), m)
    models = sorted(records, key=rank)
    rows = sorted(rows, key=lambda r: (rank(r["model"]), METHODS.index(r["method"]),
                                       r["sparsity"], r["seed"]))
    return {"config": config, "complete": complete,
            "runs_config": [records[m]["run"] for m in models],
            "sparsities": list(cfg["sparsities"]),
            "models": {m: records[m] for m in models},
            "summary": sparse_report.summary(rows), "runs": rows}


def _merge(out: Path, config: str, cfg: dict, chosen: set, rows: list[dict], records: dict,
           plots: bool) -> dict:
    """Writes this command's rows beside the other models' rows now in ``out``.

    The file is read again under a lock at every write, so commands running
    different models into the same ``out`` at once keep each other's rows.
    """
    lock = os.open(out, os.O_RDONLY)  # a lock on the directory: no file of its own
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old_rows, old_records = _previous(out / "results.json", config, cfg)
        results = _results(config, cfg,
                           [r for r in old_rows if r["model"] not in chosen] + rows,
                           {**{m: r for m, r in old_records.items() if m not in chosen},
                            **records})
        text = json.dumps(results, indent=1) + "\n"
        sparse_report.atomic_write(out / "results.json", lambda f: f.write(text.encode()))
        sparse_report.atomic_write(out / "table.md",
                                   lambda f: f.write(sparse_report.table(results).encode()))
        if plots:
            sparse_report.plot(out / "accuracy_vs_sparsity.png", results)
    finally:
        os.close(lock)  # releases the lock
    return results


def _bar(total: int, quiet: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the experiments extra
        tqdm = None
    if tqdm is None or quiet:
        return None
    return tqdm(total=total, desc="sparse training", unit="run", file=sys.stderr)


def _selected(cfg: dict, models: str | None) -> list[Run]:
    names = [run.model for run in cfg["runs"]]
    if models is None:
        return list(cfg["runs"])
    wanted = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in names]
    if unknown or not wanted:
        raise ValueError(f"--models must name models of the config {names}, got {models!r}")
    return [run for run in cfg["runs"] if run.model in wanted]


def main(argv: list[str] | None = None) -> dict:
    """Runs every method, sparsity and seed of the chosen models; returns the results (written)."""
    ap = argparse.ArgumentParser(prog="python -m experiments.sparse_training",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="full")
    ap.add_argument("--models", default=None,
                    help="comma-separated models to run (default: all of the config); their "
                         "rows replace theirs in an existing results.json, others are kept")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--data-dir", default=None, help="directory with the four MNIST IDX files")
    ap.add_argument("--corpus", type=Path, default=None, help="a text file for the LM, not the KJV")
    ap.add_argument("--cache", type=Path, default=kjv.CACHE, help="the KJV corpus cache")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    cfg = CONFIGS[args.config]
    runs = _selected(cfg, args.models)
    out = args.out if args.out is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    chosen = {run.model for run in runs}
    command = "python -m experiments.sparse_training " + " ".join(
        argv if argv is not None else sys.argv[1:])
    bar = _bar(sum(len(_expected(cfg, run.model)) for run in runs), args.quiet)
    rows: list[dict] = []  # this command's rows and records; other models' are read at writes
    records: dict = {}
    results = _merge(out, args.config, cfg, chosen, rows, records, plots=False)
    for run in runs:  # one model after the other
        t_start, load_start = time.perf_counter(), _load_avg()
        started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        task = sparse_tasks.make(run, data_dir=args.data_dir, corpus=args.corpus,
                                 cache=args.cache, quiet=args.quiet)
        jobs = _jobs(cfg, run)
        for i, (method, s, seed) in enumerate(jobs):
            r = _train(method, s, run, seed, task)
            rows.append(r)
            done = i + 1 == len(jobs)
            records[run.model] = {
                "command": command, "run": dataclasses.asdict(run), "started_utc": started,
                "wall_seconds": time.perf_counter() - t_start, "load_start": load_start,
                "load_end": _load_avg(), "n_runs": i + 1, "finished": done,
                "versions": _versions()}
            # Written after every run, so a run stopped early keeps what it finished.
            results = _merge(out, args.config, cfg, chosen, rows, records,
                             plots=not args.no_plots and done)
            if bar is not None:
                score = (f"{100 * (1 - r['error']):.2f}%" if "error" in r
                         else f"ppl {r['ppl']:.3f}")
                bar.set_postfix_str(f"{run.model} {method} {s:g} seed {seed}: {score}")
                bar.update(1)
    if bar is not None:
        bar.close()
    return results


if __name__ == "__main__":
    main()
