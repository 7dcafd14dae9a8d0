"""The sparse-training reproduction's summary, table and plot, and atomic writes of them."""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from experiments import report

__all__ = ["METHODS", "atomic_write", "plot", "summary", "table"]

METHODS = ("dense", "static", "set", "rigl", "ste", "gmp")
# Per-run scores, as (row key, summary name, scale): accuracy from the MNIST test error,
# perplexity and bits per byte for the LM.
_SCORES = (("error", "accuracy", lambda e: 100 * (1 - e)), ("ppl", "ppl", float),
           ("bits_per_byte", "bits_per_byte", float))


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Writes ``path`` through a temporary file in its directory: never a partial file.

    Args:
      path: the file to write (replaced whole, or left untouched on error).
      write: called with a binary file object open for writing.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds of every (model, method, sparsity) group's scores."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], r["sparsity"]), []).append(r)
    out = []
    for (model, method, s), rs in groups.items():
        entry = {"model": model, "method": method, "sparsity": s, "n": len(rs)}
        for key, name, scale in _SCORES:
            if all(key in r for r in rs):
                v = [scale(r[key]) for r in rs]
                entry[f"{name}_mean"] = statistics.fmean(v)
                entry[f"{name}_std"] = statistics.stdev(v) if len(v) > 1 else 0.0
        entry["density_mean"] = statistics.fmean(r["density"] for r in rs)
        entry["train_seconds_mean"] = statistics.fmean(r["train_seconds"] for r in rs)
        out.append(entry)
    return out


def _score(rows: list[dict]) -> tuple[str, str]:
    """The summary name shown for a model and its label."""
    if rows and "ppl_mean" in rows[0]:
        return "ppl", "held-out perplexity (lower is better)"
    return "accuracy", "test accuracy (%)"


def _cell(r: dict, name: str) -> str:
    cell = f"{r[f'{name}_mean']:.2f} ± {r[f'{name}_std']:.2f}"
    if name == "ppl":
        cell += f" ({r['bits_per_byte_mean']:.3f} bpb)"
    return cell


def _load(xs) -> str:
    return "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"


def table(results: dict) -> str:
    """The markdown table of ``results``: one section per model, with its command and timing."""
    summ = results["summary"]
    lines = ["# Sparse training from scratch", "",
             f"Config `{results['config']}`; mean ± std over seeds. Same steps, "
             "data order and optimizer for every method of a model; ERK sparsity over the "
             "sparse leaves.", ""]
    for run in results["runs_config"]:
        model = run["model"]
        rec = results["models"][model]
        rows = [r for r in summ if r["model"] == model]
        name, label = _score(rows)
        dense = [r for r in rows if r["method"] == "dense"]
        sps = sorted({r["sparsity"] for r in rows if r["method"] != "dense"})
        lines += [f"## {model} ({run['steps']} steps of batch {run['batch']}, "
                  f"{run['seeds']} seeds): {label}", "",
                  "| method | " + " | ".join(f"{100 * s:g}% sparse" for s in sps) + " |",
                  "|---|" + "---|" * len(sps)]
        if dense:
            lines.append(f"| dense | {_cell(dense[0], name)} (0%)" + " |" * len(sps))
        for method in METHODS[1:]:
            cells = []
            for s in sps:
                hit = [r for r in rows if r["method"] == method and r["sparsity"] == s]
                cells.append(_cell(hit[0], name) if hit else "")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", f"Command: `{rec['command']}`; wall time {rec['wall_seconds'] / 60:.1f} "
                  f"min for {rec['n_runs']} runs; load average at the start "
                  f"{_load(rec['load_start'])}, at the end {_load(rec['load_end'])}.", ""]
        if not rec.get("finished", True):
            lines += ["**Incomplete**: this model's run had not finished (still running, or "
                      "stopped) when this was written.", ""]
    if not results["complete"]:
        lines += ["**Incomplete**: a model of the config has not run (or ran with other "
                  "settings); see `complete` and `models` in results.json.", ""]
    return "\n".join(lines)


def plot(path: Path, results: dict) -> None:
    """Score against sparsity, one panel per model, written atomically to ``path`` (PNG)."""
    plt = report._plt()
    runs = results["runs_config"]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        rows = [r for r in results["summary"] if r["model"] == run["model"]]
        name, label = _score(rows)
        for method in METHODS[1:]:
            pts = sorted((r["sparsity"], r[f"{name}_mean"], r[f"{name}_std"])
                         for r in rows if r["method"] == method)
            if pts:
                s, m, e = zip(*pts)
                ax.errorbar([100 * x for x in s], m, yerr=e, marker="o", capsize=3, label=method)
        for r in rows:
            if r["method"] == "dense":
                ax.axhline(r[f"{name}_mean"], color="k", ls="--", lw=1, label="dense")
        ax.set(title=f"{run['model']} ({run['steps']} x {run['batch']})",
               xlabel="sparsity (%)", ylabel=label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
