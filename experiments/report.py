"""Tables (paper beside ours), plots, and the error-vs-compression sweep."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

import jaxrm
from experiments import configs, paper, train
from jaxrm import coding, prune, quant

__all__ = ["plot_layers", "plot_tradeoff", "plot_weights", "sweep", "tables"]


def _pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%"


def _layer_name(path: str) -> str:
    return path.split("/")[0]


def _overrides(results: dict) -> list[str]:
    """A note listing the fields that differ from the named configuration."""
    base = dataclasses.asdict(configs.get_config(results["model"], results["config"]["name"]))
    diff = {k: v for k, v in results["config"].items()
            if k in base and json.dumps(v) != json.dumps(base[k])}
    if not diff:
        return []
    items = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in diff.items())
    return [f"**Shortened or modified run**: differs from config `{results['config']['name']}` "
            f"in {items}.", ""]


def tables(results: dict) -> str:
    """Markdown Tables 1-3 of the paper beside ours, from a ``results.json`` dict."""
    model, cfg = results["model"], results["config"]["name"]
    p1 = paper.TABLE1[model]
    s = results["summary"]
    first = results["runs"][0]
    n = len(s["seeds"])
    pm = "±"
    err = (f"{_pct(s['error']['mean'])} {pm} {_pct(s['error']['std'])}" if n > 1
           else _pct(s["error"]["mean"]))
    ref = (f"{_pct(s['dense_error']['mean'])} {pm} {_pct(s['dense_error']['std'])}" if n > 1
           else _pct(s["dense_error"]["mean"]))
    kb = s["bytes"]["mean"] / 1000
    dense_kb = first["coding"]["dense_bytes"] / 1000
    lines = [
        f"# Deep Compression, {model}, config `{cfg}`",
        "",
        f"Source of the paper's numbers: {paper.SOURCE}. Ours: {n} seed(s) "
        f"{s['seeds']}, mean {pm} std where more than one; error and size measured "
        "from the decoded `model.jrm`.",
        "",
        *_overrides(results),
        "## Table 1: error and size",
        "",
        "| | ref. error | compressed error | ref. size | compressed size | ratio |",
        "|---|---|---|---|---|---|",
        f"| paper | {_pct(p1['ref_error'])} | {_pct(p1['error'])} | {p1['ref_kb']} KB "
        f"| {p1['kb']} KB | {p1['ratio']}x |",
        f"| ours | {ref} | {err} | {dense_kb:.0f} KB | {kb:.1f} KB "
        f"| {s['ratio']['mean']:.1f}x |",
        "",
        f"## Table {2 if model == 'lenet-300-100' else 3}: per layer "
        f"(seed {first['seed']}; bits per kept weight)",
        "",
        "| layer | weights | density P | weight bits P+Q | weight bits P+Q+H "
        "| index bits P+Q | index bits P+Q+H | rate P+Q | rate P+Q+H |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ours = {r["path"]: r for r in first["coding"]["report"]}
    for row in paper.TABLES[model]:
        lines.append(
            f"| {row.layer} (paper) | {row.weights} | {_pct(row.density, 0)} "
            f"| {row.weight_bits_pq:g} | {row.weight_bits_pqh:g} | {row.index_bits_pq:g} "
            f"| {row.index_bits_pqh:g} | {_pct(row.rate_pq)} | {_pct(row.rate_pqh)} |"
        )
        key = "total" if row.layer == "total" else f"{row.layer}/kernel"
        r = ours.get(key)
        if r is None:
            continue
        if row.layer == "total":
            weights = sum(x["weights"] for p, x in ours.items() if p.endswith("kernel"))
            kept = sum(x["kept"] for p, x in ours.items() if p.endswith("kernel"))
            density = kept / weights
        else:
            weights, density = r["weights"], r["kept"] / max(r["weights"], 1)
        lines.append(
            f"| {row.layer} (ours) | {weights / 1000:.1f}K | {_pct(density, 1)} "
            f"| {r['weight_bits_pq']:.1f} | {r['weight_bits_pqh']:.1f} "
            f"| {r['index_bits_pq']:.1f} | {r['index_bits_pqh']:.1f} "
            f"| {_pct(r['bytes_pq'] / r['original_bytes'])} "
            f"| {_pct(r['bytes'] / r['original_bytes'])} |"
        )
    lines += [
        "",
        "Our total row counts every byte of the file (biases, codebooks, header); the "
        "paper's rates are over the weights.",
        "",
        "## The file, as `jaxrm.coding.report` prints it",
        "",
        first["coding"]["report_markdown"],
        "",
        "## Stages (seed {}) and wall time".format(first["seed"]),
        "",
        "| stage | test error | seconds |",
        "|---|---|---|",
        f"| dense | {_pct(first['dense']['error'])} | {first['dense']['seconds']:.1f} |",
        f"| prune ({first['prune']['mode']}, density "
        f"{_pct(first['prune']['density']['total'], 1)}) | {_pct(first['prune']['error'])} "
        f"| {first['prune']['seconds']:.1f} |",
        f"| quantize (before fine-tuning {_pct(first['quant']['error_before_finetune'])}) "
        f"| {_pct(first['quant']['error'])} | {first['quant']['seconds']:.1f} |",
        f"| code ({first['coding']['entropy']}) + decode | {_pct(first['coding']['error'])} "
        f"| {first['coding']['seconds'] + first['coding']['decode_eval_seconds']:.1f} |",
    ]
    later = paper.LATER[model]
    lines += [
        "",
        f"Later work: {later['method']} reached {later['ratio']}x at "
        f"{_pct(later['error'])} on {model}.",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _largest(tree: Any) -> str:
    rows = [(np.size(x), p) for p, x in jaxrm.tree.leaves_with_paths(tree) if np.ndim(x) >= 2]
    return max(rows)[1]


def plot_weights(path: Path, dense: Any, pruned: Any, quantized: Any) -> None:
    """Figure 4/7 of the paper: the largest layer dense, pruned, and quantized."""
    plt = _plt()
    name = _largest(dense)
    d = np.asarray(dict(jaxrm.tree.leaves_with_paths(dense))[name]).ravel()
    p = np.asarray(dict(jaxrm.tree.leaves_with_paths(pruned))[name]).ravel()
    deq = dict(jaxrm.tree.leaves_with_paths(quant.dequantize(quantized)))[name]
    q = np.asarray(deq).ravel()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    lim = float(np.abs(d).max())
    axes[0].hist(d, bins=200, color="tab:gray")
    axes[0].set_title(f"{name}: dense ({d.size} weights)")
    axes[1].hist(p[p != 0], bins=200, color="tab:blue")
    axes[1].set_title(f"pruned ({np.count_nonzero(p)} kept)")
    vals, counts = np.unique(q[q != 0], return_counts=True)
    axes[2].bar(vals, counts, width=lim / 100, color="tab:orange")
    axes[2].set_title(f"quantized ({vals.size} shared values)")
    for ax in axes:
        ax.set_xlim(-lim, lim)
        ax.set_xlabel("weight value")
    axes[0].set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_layers(path: Path, run: dict) -> None:
    """Per-layer density and bits per kept weight (from the file's report)."""
    plt = _plt()
    rows = [r for r in run["coding"]["report"] if r["path"].endswith("kernel")]
    names = [_layer_name(r["path"]) for r in rows]
    x = np.arange(len(rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    a.bar(x, [100 * r["kept"] / r["weights"] for r in rows], color="tab:blue")
    a.set_xticks(x, names)
    a.set_ylabel("weights kept (%)")
    a.set_title("density after pruning")
    w = 0.2
    b.bar(x - 1.5 * w, [r["weight_bits_pq"] for r in rows], w, label="weight bits P+Q")
    b.bar(x - 0.5 * w, [r["weight_bits_pqh"] for r in rows], w, label="weight bits P+Q+H")
    b.bar(x + 0.5 * w, [r["index_bits_pq"] for r in rows], w, label="index bits P+Q")
    b.bar(x + 1.5 * w, [r["index_bits_pqh"] for r in rows], w, label="index bits P+Q+H")
    b.set_xticks(x, names)
    b.set_ylabel("bits per kept weight")
    b.legend(fontsize=7)
    b.set_title("bits per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep(apply, dense: Any, data: train.Data, *, densities=None, bits=None) -> dict:
    """Error vs compression rate without retraining (Figure 6 of the paper).

    Pruning only (magnitude, the same density on every kernel, float weights
    with sparse indices), quantization only (k-means on every kernel, no
    pruning) and both (pruning, then 5-bit k-means), each encoded with
    Huffman coding; the error is measured from the decoded bytes.
    """
    densities = densities or [0.5, 0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03]
    bits = bits or [8, 6, 5, 4, 3, 2]
    dense_bytes = 4 * jaxrm.tree.count(dense, jaxrm.tree.arrays)

    def point(tree, **kw):
        blob = coding.encode(tree, **kw)
        err = train.error_rate(apply, coding.decode(blob), data)
        return {"ratio": dense_bytes / len(blob), "error": err, "bytes": len(blob)}

    out = {"prune": [], "quant": [], "both": []}
    for d in densities:
        m = prune.masks(prune.magnitude(dense), 1.0 - d)
        out["prune"].append({"density": d, **point(prune.apply(dense, m), masks=m)})
        q = quant.kmeans(dense, 5, masks=m)
        out["both"].append({"density": d, "bits": 5, **point(q)})
    for b in bits:
        out["quant"].append({"bits": b, **point(quant.kmeans(dense, b))})
    return out


def plot_tradeoff(path: Path, sw: dict, ours: list[tuple[str, float, float]]) -> None:
    """Figure 6: error vs compression rate for pruning, quantization, both."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label in (("prune", "pruning only"), ("quant", "quantization only"),
                       ("both", "pruning + quantization")):
        pts = sorted(sw[key], key=lambda r: r["ratio"])
        ax.plot([r["ratio"] for r in pts], [100 * r["error"] for r in pts], "o-", label=label)
    for label, ratio, err in ours:
        ax.plot([ratio], [100 * err], "*", markersize=14, label=label)
    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 5, 10, 20, 40, 60, 100, 200) if t <= 1.5 * ax.get_xlim()[1]]
    ax.set_xticks(ticks, [f"{t}x" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("compression rate (dense float32 bytes / file bytes)")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, min(15.0, ax.get_ylim()[1]))
    ax.set_title("without retraining (lines) vs the full pipeline (stars)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
