"""Scaling table: jaxrm's main operations on transformer-shaped trees of 1M to 124M weights.

The tree: ``L`` blocks of attention (``c_attn`` (d, 3d), ``c_proj`` (d, d))
and MLP (``c_fc`` (d, 4d), ``c_proj`` (4d, d)) kernels with their biases and
layer norms, a token embedding ``wte`` (V, d) and a position embedding; the
124M one is GPT-2 small (d=768, L=12, V=50304: the vocabulary padded to a
multiple of 64, as GPT-2 training code pads it; 2:4 sparsity needs the rows
of ``wte`` in fours). Operations, in the order of a
Deep Compression pipeline:

* ``masks``: ``prune.masks(prune.magnitude(params), 0.9)`` (per layer)
* ``nm``: ``prune.masks(prune.magnitude(params), 0.5, pattern=prune.nm(2, 4))``
* ``kmeans``: ``quant.kmeans(params, 5, masks=masks)``
* ``uniform``: ``quant.uniform(params, 8)``
* ``encode`` / ``decode``: ``coding.encode(kmeans tree)`` (Huffman) and back
* ``save`` / ``load``: the same through a file

Times: every operation (and a memcpy of all weights, the one-memory-pass
yardstick) runs once per round, interleaved, for ``--rounds`` rounds in this
process after a warm-up; min and median. Large trees take fewer rounds
(``ROUNDS_AT``: one round at 124M, so the whole 124M row takes minutes, not
an hour), and each size's table is printed as soon as its times are in,
before its peak-memory runs. Peak extra RSS: each operation once
more in a fresh subprocess, which builds its inputs first (without running
the operation itself), then reports the peak resident memory the call adds
over the resident size just before it (``_harness.peak_extra_rss``; memory
freed while building the inputs and reused by the call is not counted; the
call's first-run compilation is).

Run: ``python benchmarks/scale.py`` (1M and 10M); ``--sizes 1M,10M,124M`` for
GPT-2 small too (minutes, several GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from _harness import conditions, load, memcpy, peak_extra_rss, rounds

from jaxrm import coding, prune, quant

SHAPES = {  # d, blocks, vocabulary, positions
    "1M": (128, 4, 2000, 256),
    "10M": (256, 12, 2600, 512),
    "124M": (768, 12, 50304, 1024),
}
# At most this many timed rounds per size (the warm-up run comes on top).
ROUNDS_AT = {"1M": 99, "10M": 3, "124M": 1}
OPS = ("masks", "nm", "kmeans", "uniform", "encode", "decode", "save", "load")


def gpt_tree(size: str, seed: int = 0) -> dict:
    d, blocks, vocab, positions = SHAPES[size]
    rng = np.random.default_rng(seed)

    def w(*shape):
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    def dense(a, b):
        return {"kernel": w(a, b), "bias": np.zeros(b, np.float32)}

    def norm():
        return {"scale": np.ones(d, np.float32), "bias": np.zeros(d, np.float32)}

    tree = {"wte": {"embedding": w(vocab, d)}, "wpe": {"embedding": w(positions, d)},
            "ln_f": norm()}
    for i in range(blocks):
        tree[f"h_{i}"] = {
            "ln_1": norm(), "ln_2": norm(),
            "attn": {"c_attn": dense(d, 3 * d), "c_proj": dense(d, d)},
            "mlp": {"c_fc": dense(d, 4 * d), "c_proj": dense(4 * d, d)},
        }
    return jax.tree.map(jax.numpy.asarray, tree)


def pipeline(size: str, upto: str, path: str) -> dict:
    """The inputs of operation ``upto`` (built by the operations before it)."""
    s = {"params": gpt_tree(size)}
    if upto in ("masks", "nm", "uniform"):  # their inputs: the weights alone
        return s
    s["masks"] = prune.masks(prune.magnitude(s["params"]), 0.9)
    if upto in ("encode", "decode", "save", "load"):
        s["kmeans"] = quant.kmeans(s["params"], 5, masks=s["masks"])
    if upto == "decode":
        s["data"] = coding.encode(s["kmeans"])
    if upto == "load":
        coding.save(path, s["kmeans"])
    return s


def operations(s: dict, path: str) -> dict:
    p = s["params"]
    return {
        "masks": lambda: prune.masks(prune.magnitude(p), 0.9),
        "nm": lambda: prune.masks(prune.magnitude(p), 0.5, pattern=prune.nm(2, 4)),
        "kmeans": lambda: quant.kmeans(p, 5, masks=s["masks"]),
        "uniform": lambda: quant.uniform(p, 8),
        "encode": lambda: coding.encode(s["kmeans"]),
        "decode": lambda: coding.decode(s["data"]),
        "save": lambda: coding.save(path, s["kmeans"]),
        "load": lambda: coding.load(path),
    }


def child(size: str, op: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.jrm")
        s = pipeline(size, op, path)
        fn = operations(s, path)[op]
        start = time.perf_counter()
        peak, _ = peak_extra_rss(fn)
        first = time.perf_counter() - start
    print(json.dumps({"peak": peak, "first": first}))


def peak_in_subprocess(size: str, op: str) -> dict:
    """``{"peak": bytes, "first": seconds}`` of ``op``'s first call in a fresh process."""
    res = subprocess.run(
        [sys.executable, __file__, "--child", op, "--sizes", size],
        capture_output=True, text=True, check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def print_table(n: int, times: dict, rss: dict) -> None:
    base = min(times["memcpy"])
    print(f"| {'operation':9} | {'min s':>8} | {'median s':>8} | {'min / memcpy':>12} | "
          f"{'first call s':>12} | {'peak extra RSS MiB':>18} | {'bytes / weight':>14} |")
    print(f"|{'-' * 11}|{'-' * 9}:|{'-' * 9}:|{'-' * 13}:|{'-' * 13}:|{'-' * 19}:|{'-' * 15}:|")
    for op in (*OPS, "memcpy"):
        lo, med = min(times[op]), statistics.median(times[op])
        r = rss.get(op)
        first = f"{r['first']:12.3f}" if r else f"{'':>12}"
        mib = f"{r['peak'] / 2**20:18.1f}" if r else f"{'':>18}"
        per = f"{r['peak'] / n:14.2f}" if r else f"{'':>14}"
        print(f"| {op:9} | {lo:8.3f} | {med:8.3f} | {lo / base:12.1f} | {first} | {mib} | {per} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,10M", help="comma-separated, of 1M, 10M, 124M")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds per size, at most ROUNDS_AT of the size")
    parser.add_argument("--no-rss", action="store_true", help="skip the subprocess RSS runs")
    parser.add_argument("--child", choices=OPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    if args.child:
        child(sizes[0], args.child)
        return
    conditions("scaling: jaxrm operations on transformer-shaped trees")
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.jrm")
            s = pipeline(size, "decode", path)
            n = sum(x.size for x in jax.tree.leaves(s["params"]))
            ops = operations(s, path)
            ops["memcpy"] = memcpy(jax.tree.leaves(s["params"]))
            n_rounds = max(1, min(args.rounds, ROUNDS_AT.get(size, args.rounds)))
            times = rounds(ops, n_rounds)
            size_file = os.path.getsize(path)
            del s, ops
        print(f"\n{size}: {n:,} weights ({4 * n / 2**20:.0f} MiB float32), "
              f".jrm file {size_file:,} B; {n_rounds} interleaved round(s) after a warm-up; "
              f"{load()}", flush=True)
        print_table(n, times, {})
        if args.no_rss:
            continue
        rss = {}
        for op in OPS:
            rss[op] = peak_in_subprocess(size, op)
            print(f"  {op}: first call in a fresh process {rss[op]['first']:.3f} s, peak extra "
                  f"RSS {rss[op]['peak'] / 2**20:.1f} MiB; {load()}", flush=True)
        print(f"\n{size} with peak memory:")
        print_table(n, times, rss)
    print(f"\n(done; {load()})")


if __name__ == "__main__":
    main()
