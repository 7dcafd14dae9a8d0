"""Deep Compression on MNIST, end to end from the compressed file.

Usage::

    python -m experiments.deep_compression --model lenet-300-100 --config paper --seeds 3

Stages: dense training, pruning with retraining, k-means weight sharing with
centroid fine-tuning, entropy coding into ``model.jrm``, and the test error of
the parameters decoded from that file. Writes ``results.json``, ``table.md``,
``model.jrm`` (and ``model-seed<N>.jrm`` for further seeds) and plots to
``experiments/results/<model>-<config>/`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import jax

import jaxrm
from experiments import configs, models, pipeline, report, train
from experiments import data as mnist

RESULTS = Path(__file__).resolve().parent / "results"


def _parse_set(items: list[str]) -> dict:
    """``--set field=value`` overrides (values parsed as JSON where possible)."""
    fields = {f.name: f for f in dataclasses.fields(configs.Config)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields or key in ("name", "model"):
            raise SystemExit(
                f"--set expects FIELD=VALUE with FIELD in {sorted(fields)}; got {item!r}"
            )
        try:
            v = json.loads(value)
        except json.JSONDecodeError:
            v = value
        if isinstance(v, list):  # densities / bits: [["ip1/kernel", 0.08], ...]
            v = tuple(tuple(x) for x in v)
        out[key] = v
    return out


def _versions() -> dict:
    import flax
    import numpy
    import optax
    import orbax.checkpoint

    return {
        "jaxrm": jaxrm.__version__,
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax-checkpoint": orbax.checkpoint.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(jax.devices()[0].device_kind),
    }


def main(argv: list[str] | None = None) -> dict:
    """Runs the pipeline; returns the results dict (also written to ``--out``)."""
    ap = argparse.ArgumentParser(prog="python -m experiments.deep_compression",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(models.MODELS), default="lenet-300-100")
    ap.add_argument("--config", choices=["paper", "best"], default="paper")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds (seed, seed+1, ...)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results directory (default experiments/results/<model>-<config>)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from the checkpoints in <out>/ckpt")
    ap.add_argument("--sweep", action="store_true",
                    help="also measure error vs compression without retraining (tradeoff.png)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--data-dir", default=None, help="directory with the four MNIST IDX files")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a Config field (e.g. --set dense_epochs=2)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--print-table", action="store_true", help="print table.md at the end")
    ap.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    cfg = configs.get_config(args.model, args.config, **_parse_set(args.set))
    out = args.out if args.out is not None else RESULTS / cfg.short()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    t0 = time.perf_counter()
    m = mnist.load_mnist(args.data_dir, quiet=args.quiet)
    data = train.device_data(m)
    data_s = time.perf_counter() - t0

    runs, keep = [], {}
    for i in range(args.seeds):
        seed = args.seed + i
        name = "model.jrm" if i == 0 else f"model-seed{seed}.jrm"
        r = pipeline.run_seed(cfg, seed, data, out, resume=args.resume, quiet=args.quiet,
                              stop_after=args.stop_after, jrm_name=name,
                              keep=keep if i == 0 else None)
        runs.append(r)
        if not args.quiet:
            print(f"[{cfg.short()} seed {seed}] error {100 * r['error']:.2f}% from {name}, "
                  f"{r['bytes']} bytes, {r['ratio']:.1f}x", file=sys.stderr, flush=True)

    results = {
        "model": cfg.model,
        "config": dataclasses.asdict(cfg),
        "command": "python -m experiments.deep_compression " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"),
        "summary": pipeline.summarize(runs),
        "runs": runs,
        "data_seconds": data_s,
        "versions": _versions(),
    }
    apply = models.apply_fn(cfg.model)
    if args.sweep:
        t0 = time.perf_counter()
        results["sweep"] = report.sweep(apply, keep["dense"], data)
        results["sweep_seconds"] = time.perf_counter() - t0
    if not args.no_plots:
        t0 = time.perf_counter()
        report.plot_weights(out / "weights.png", keep["dense"], keep["pruned"], keep["quantized"])
        report.plot_layers(out / "layers.png", runs[0])
        sw = results.get("sweep")
        if sw is None and (out / "results.json").is_file():  # keep an earlier sweep's data
            sw = json.loads((out / "results.json").read_text()).get("sweep")
            if sw is not None:
                results["sweep"] = sw
        if sw is not None:
            report.plot_tradeoff(out / "tradeoff.png", sw,
                                 [(f"{cfg.short()} (seed {runs[0]['seed']})", runs[0]["ratio"],
                                   runs[0]["error"])])
        results["plot_seconds"] = time.perf_counter() - t0
    results["total_seconds"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = report.tables(results)
    (out / "table.md").write_text(table)
    if args.print_table:
        print(table)
    return results


if __name__ == "__main__":
    main()
