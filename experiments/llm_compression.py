"""One-shot compression of a small GPT on the King James Bible, measured from the ``.jrm`` file.

Usage::

    python -m experiments.llm_compression --config full    # make reproduce-llm
    python -m experiments.llm_compression --config tiny    # a minute-long smoke run

Stages: the corpus from Debian's ``bible-kjv-text`` (see ``experiments/kjv.py``),
training of a byte-level decoder under ``nn.scan`` (cached under ``build/llm/``
as a ``.jrm`` file, so later runs skip it), calibration statistics on training
sequences, every method of ``experiments/llm_methods.py``, and for each the
held-out perplexity of the parameters decoded from its ``.jrm`` file, its file
size and its wall time; then the byte-budget allocation at two budgets
against the uniform settings of the same size. Writes ``results.json``,
``table.md`` and ``ppl_vs_size.png`` to ``--out`` (default
``build/llm/results-<config>``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrm
from experiments import gpt, kjv, llm_methods
from jaxrm import budget, calib, coding

CONFIGS = {
    # ~3.3M parameters (sized so the whole run fits 15 minutes on 2 CPU cores);
    # the float model trains once and is cached.
    "full": dict(
        d_model=256,
        heads=4,
        layers=4,
        context=128,
        steps=600,
        batch=16,
        lr=3e-3,
        group=128,
        calib=64,
        eval_windows=128,
    ),
    "tiny": dict(
        d_model=64,
        heads=2,
        layers=2,
        context=32,
        steps=150,
        batch=16,
        lr=3e-3,
        group=32,
        calib=16,
        eval_windows=32,
    ),
}


def _bar(total, desc):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the experiments extra
        return None
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)


def windows(tokens: np.ndarray, length: int, count: int, rng=None) -> np.ndarray:
    """``count`` windows of ``length`` tokens: random starts, or consecutive without ``rng``."""
    if rng is None:
        n = min(count, (len(tokens) - 1) // length)
        return tokens[: n * length].reshape(n, length)
    starts = rng.integers(0, len(tokens) - length, count)
    return np.stack([tokens[s : s + length] for s in starts])


def optimizer(lr: float, steps: int) -> optax.GradientTransformation:
    """AdamW (weight decay 0.01) after clipping to norm 1, warmup then cosine decay."""
    warmup = min(50, steps // 10)
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.01))


def train(model, cfg, tokens, seed):
    init = jax.jit(model.init)  # one compile instead of one per initializer
    params = init(jax.random.key(seed), jnp.zeros((1, cfg["context"]), jnp.int32))["params"]
    opt = optimizer(cfg["lr"], cfg["steps"])
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch):
        loss, g = jax.value_and_grad(lambda p: gpt.loss(model, p, batch))(params)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(seed)
    bar = _bar(cfg["steps"], "train")
    for i in range(cfg["steps"]):
        batch = jnp.asarray(windows(tokens, cfg["context"] + 1, cfg["batch"], rng))
        params, state, loss = step(params, state, batch)
        if bar is not None:
            bar.update()
            if i % 50 == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}")
    if bar is not None:
        bar.close()
    return params


_LOSS = {}


def perplexity(model, params, tokens, cfg, batch: int = 32) -> float:
    """exp of the mean next-token loss over ``eval_windows`` consecutive held-out windows."""
    w = windows(tokens, cfg["context"] + 1, cfg["eval_windows"])
    if model not in _LOSS:  # one compiled program for every method's parameters
        _LOSS[model] = jax.jit(lambda p, b: gpt.loss(model, p, b))
    f = _LOSS[model]
    total = 0.0
    for i in range(0, len(w), batch):
        chunk = w[i : i + batch]
        total += float(f(params, jnp.asarray(chunk))) * len(chunk)
    return math.exp(total / len(w))


def evaluate(model, params_like, data: bytes, test, cfg) -> float:
    """Held-out perplexity of the parameters decoded from ``data`` (a ``.jrm`` file)."""
    decoded = coding.decode(data)  # Linen params are nested dicts: no `like` needed
    return perplexity(model, llm_methods.effective(decoded), test, cfg)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--corpus", type=Path, default=None, help="a text file instead of the KJV")
    ap.add_argument("--only", nargs="*", default=None, help="method names to run")
    ap.add_argument(
        "--qwix",
        action="store_true",
        help="also run Qwix's GPTQ (eager, about 0.1 s per weight column on 2 cores)",
    )
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
    ap.add_argument("--cache", type=Path, default=kjv.CACHE, help="corpus and float model cache")
    args = ap.parse_args(argv)
    cfg = dict(CONFIGS[args.config])
    if args.steps is not None:
        cfg["steps"] = args.steps
    out = args.out or args.cache / f"results-{args.config}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = args.corpus.read_bytes() if args.corpus else kjv.text(args.cache)
    train_tok, test_tok, vocab = kjv.splits(data)
    mcfg = gpt.GPTConfig(len(vocab), cfg["d_model"], cfg["heads"], cfg["layers"], cfg["context"])
    model = gpt.GPT(mcfg)
    shape = "-".join(str(cfg[k]) for k in ("d_model", "heads", "layers", "context", "batch", "lr"))
    tag = f"{args.config}-{shape}-steps{cfg['steps']}-seed{args.seed}-{len(data)}"
    cache = args.cache / f"float-{tag}.jrm"
    like = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    t_train = 0.0
    if cache.exists():
        params = coding.load(cache, like=like)
    else:
        t = time.perf_counter()
        params = train(model, cfg, train_tok, args.seed)
        t_train = time.perf_counter() - t
        cache.parent.mkdir(parents=True, exist_ok=True)
        coding.save(cache, params, entropy="none")
    n_params = jaxrm.tree.count(params, where=jaxrm.tree.arrays)

    rng = np.random.default_rng(args.seed + 1)
    cal = windows(train_tok, cfg["context"], cfg["calib"], rng)
    fn = lambda p, b: model.apply({"params": p}, b)
    t = time.perf_counter()
    stats = calib.collect(
        fn,
        params,
        [jnp.asarray(cal[i : i + 8]) for i in range(0, len(cal), 8)],
        where=llm_methods.WHERE,
    )
    t_calib = time.perf_counter() - t

    rows = []
    table = llm_methods.methods(cfg["group"])
    names = [n for n in table if args.only is None or n in args.only]
    if not args.qwix:
        names = [n for n in names if not n.startswith("Qwix")]
    bar = _bar(len(names) + 4, "methods")
    for name in names:
        try:
            tree, masks, secs = llm_methods.run(table[name], params, stats)
        except ImportError as e:  # Qwix is in the experiments extra
            print(f"skipping {name}: {e}", file=sys.stderr)
            continue
        blob = coding.encode(tree, masks=masks)
        ppl = evaluate(model, like, blob, test_tok, cfg)
        rows.append({"method": name, "bytes": len(blob), "ppl": ppl, "seconds": secs})
        if name == "Qwix GPTQ 4-bit (sym.)":  # floats out: its size is not a Qwix file size
            rows[-1]["bytes"] = None
        if bar is not None:
            bar.update()
            bar.set_postfix(last=f"{name}: {ppl:.2f}")
    by = {r["method"]: r for r in rows}
    for ref_name in ("GPTQ 4-bit", "GPTQ 3-bit"):
        if ref_name not in by:
            continue
        b = by[ref_name]["bytes"]
        t = time.perf_counter()
        alloc = budget.allocate(params, stats, b, where=llm_methods.WHERE)
        secs = time.perf_counter() - t
        ppl = evaluate(model, like, alloc.data, test_tok, cfg)
        rows.append(
            {
                "method": f"budget = {ref_name} file",
                "bytes": len(alloc.data),
                "ppl": ppl,
                "seconds": secs,
                "allocation": [list(r) for r in alloc.rows],
            }
        )
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    result = {
        "config": args.config,
        "settings": cfg,
        "seed": args.seed,
        "parameters": n_params,
        "corpus": {
            "package": f"bible-kjv-text {kjv.VERSION}" if not args.corpus else str(args.corpus),
            "bytes": len(data),
            "train_tokens": len(train_tok),
            "test_tokens": len(test_tok),
            "vocab": len(vocab),
        },
        "train_seconds": t_train,
        "calib_seconds": t_calib,
        "total_seconds": time.perf_counter() - t0,
        "loadavg": os.getloadavg(),
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "jaxrm": jaxrm.__version__,
        },
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(_table(result))
    _plot(rows, out / "ppl_vs_size.png")
    print(_table(result))


def _table(result) -> str:
    lines = [
        f"Held-out perplexity from the decoded .jrm file ({result['parameters']} parameters, "
        f"config {result['config']}, seed {result['seed']})",
        "",
        "| method | file bytes | perplexity | seconds |",
        "|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        b = "-" if r["bytes"] is None else str(r["bytes"])
        lines.append(f"| {r['method']} | {b} | {r['ppl']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


_FAMILIES = ("float", "RTN", "GPTQ", "AWQ", "magnitude", "Wanda", "SparseGPT", "budget", "Qwix")


def _plot(rows, path: Path) -> None:
    """Perplexity against file size; points numbered, the numbers named in the legend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return
    colors = dict(zip(_FAMILIES, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(9, 5.5))
    shown = [r for r in rows if r["bytes"] is not None]
    for n, r in enumerate(shown, 1):
        family = next((f for f in _FAMILIES if r["method"].startswith(f)), "float")
        x, y = r["bytes"] / 1e6, r["ppl"]
        ax.scatter(x, y, color=colors[family], s=28, label=f"{n}. {r['method']}", zorder=3)
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("file size (MB, log scale)")
    ax.set_ylabel("held-out perplexity (from the decoded .jrm file)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
