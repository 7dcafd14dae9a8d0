"""Entropy coding speed and size: jaxrm.coding next to dahuffman and constriction.

1. Huffman, 1M symbols (the 5-bit k-means indices of a normal 1000x1000
   leaf): jaxrm's canonical Huffman against dahuffman (pure Python), encode +
   decode, stream and whole-file sizes.
2. rANS at several stream lengths: jaxrm (constriction's coder behind the
   jaxrm section, table and checks included) against constriction called
   directly (histogram, model and coder), encode and decode apart. Short
   streams are timed over many calls a run and more rounds.
3. Many small leaves: 1024 Codebook leaves of 32x32 through ``coding.encode``
   / ``decode``: time and file bytes over the empirical entropy, per leaf.
4. Fresh process: a user's one-off ``encode`` + ``decode`` of the 1M 5-bit
   Codebook leaf, first call in a new process (what a script pays once)
   against the steady state in that same process, for several processes.

Each table interleaves its contenders round by round (``_harness``), prints
min and median, a memcpy of the data as the one-memory-pass yardstick, and
the load average. Run: ``python benchmarks/coding.py [--rounds N] [--big]
[--only huffman|fresh|rans|small]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
from _harness import conditions, memcpy, rounds, table

from jaxrm import coding
from jaxrm.coding import _ans, _huffman
from jaxrm.quant._types import Codebook


def kmeans_indices(n=1000, k=32, iters=10, seed=0):
    w = np.random.default_rng(seed).normal(size=(n, n)).astype(np.float32)
    flat = w.reshape(-1)
    cent = np.linspace(flat.min(), flat.max(), k)  # linear init, as Deep Compression
    for _ in range(iters):
        idx = np.searchsorted((cent[1:] + cent[:-1]) / 2, flat)
        sums = np.bincount(idx, weights=flat, minlength=k)
        counts = np.bincount(idx, minlength=k)
        cent = np.where(counts > 0, sums / np.maximum(counts, 1), cent)
    idx = np.searchsorted((cent[1:] + cent[:-1]) / 2, flat)
    return idx.astype(np.uint8), cent.astype(np.float32), w


def entropy_bytes(sym, alphabet=32):
    c = np.bincount(sym, minlength=alphabet)
    p = c[c > 0] / len(sym)
    return float(-(p * np.log2(p)).sum()) * len(sym) / 8


def huffman(n_rounds):
    sym, cent, w = kmeans_indices()
    n = len(sym)
    print(f"\n-- Huffman, {n:,} symbols, entropy {8 * entropy_bytes(sym) / n:.4f} bits/symbol")
    data = _huffman.encode(sym, 32, 5)
    contenders = {
        "jaxrm Huffman encode+decode": lambda: _huffman.decode(
            _huffman.encode(sym, 32, 5), n, 32, 5
        ),
        "memcpy of the float32 leaf": memcpy([w]),
    }
    notes = {}
    try:
        from dahuffman import HuffmanCodec
    except ImportError:
        print("dahuffman is not installed: skipping it")
    else:
        symbols = sym.tolist()

        def dahuff():
            codec = HuffmanCodec.from_data(symbols)
            return codec.decode(codec.encode(symbols))

        contenders["dahuffman encode+decode"] = dahuff  # pure Python: no first-call cost
        d_bytes = len(HuffmanCodec.from_data(symbols).encode(symbols))
        notes["dahuffman encode+decode"] = f"stream {d_bytes:,} B"
    assert np.array_equal(_huffman.decode(data, n, 32, 5), sym)
    leaf = Codebook(jnp.asarray(sym.reshape(w.shape)), jnp.asarray(cent), bits=5)
    file_bytes = len(coding.encode({"w": leaf}))
    notes["jaxrm Huffman encode+decode"] = f"stream {len(data):,} B, .jrm file {file_bytes:,} B"
    times = rounds(contenders, n_rounds)
    table(times, "jaxrm Huffman encode+decode", notes)
    return min(times.get("dahuffman encode+decode", [float("nan")]))


def rans(sizes, n_rounds):
    try:
        import constriction
    except ImportError:
        print("constriction is not installed: skipping the rANS table")
        return
    rng = np.random.default_rng(0)
    for n in sizes:
        rans_at(constriction, np.clip(np.round(rng.normal(16, 4, n)), 0, 31).astype(np.uint8),
                n_rounds)


def constriction_bare(constriction, sym):
    """constriction called directly on 32-symbol ``sym``: ``(encode, decode, words)``.

    ``encode`` builds the histogram, the model and the coder; ``decode``
    decodes its words with that model (no table to read).
    """
    n = len(sym)

    def encode():
        counts = np.bincount(sym, minlength=32)
        model = constriction.stream.model.Categorical(counts / n, perfect=False)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(sym.astype(np.int32), model)
        return coder.get_compressed(), model

    words, model = encode()
    return encode, lambda: constriction.stream.stack.AnsCoder(words).decode(model, n), words


def rans_at(constriction, sym, n_rounds):
    n = len(sym)
    print(f"\n-- rANS, {n:,} symbols (rounded normal over 32 symbols, "
          f"entropy {8 * entropy_bytes(sym) / n:.4f} bits/symbol)")
    c_encode, c_decode, words = constriction_bare(constriction, sym)
    data = _ans.encode(sym, 32, 5)
    assert np.array_equal(_ans.decode(data, n, 32, 5), sym)
    contenders = {
        "jaxrm rANS encode": lambda: _ans.encode(sym, 32, 5),
        "constriction encode": c_encode,
        "jaxrm rANS decode": lambda: _ans.decode(data, n, 32, 5),
        "constriction decode": c_decode,
        "memcpy of the symbols as float32": memcpy([sym.astype(np.float32)]),
    }
    # Short streams: each timed run makes `reps` calls (about 2**17 symbols in
    # all), so the timer's and the harness's per-run costs do not blur tens of us.
    reps = max(1, (1 << 17) // n)
    if reps > 1:
        contenders = {k: lambda f=f: [f() for _ in range(reps)] and None
                      for k, f in contenders.items()}
        print(f"(each timed run: {reps} calls; times per call)")
    times = rounds(contenders, n_rounds if reps == 1 else max(n_rounds, 30))  # rounds are cheap
    times = {k: [t / reps for t in v] for k, v in times.items()}
    notes = {
        "jaxrm rANS encode": f"section {len(data):,} B "
        f"({len(data) / entropy_bytes(sym):.4f} x entropy)",
        "constriction encode": f"words {words.nbytes:,} B (no table)",
    }
    table(times, "constriction encode", notes, unit=1e-3 if n > 10_000 else 1e-6)
    for op in ("encode", "decode"):
        ratio = min(times[f"jaxrm rANS {op}"]) / min(times[f"constriction {op}"])
        print(f"jaxrm / constriction, {op}: {ratio:.2f}x (min over rounds)")


def small_leaves(n_rounds, leaves=1024, side=32):
    rng = np.random.default_rng(0)
    cent = np.linspace(-2, 2, 32).astype(np.float32)
    tree = {}
    for i in range(leaves):
        w = rng.normal(size=(side, side))
        idx = np.abs(w.reshape(-1, 1) - cent).argmin(1).astype(np.uint8).reshape(side, side)
        tree[f"layer{i}"] = Codebook(jnp.asarray(idx), jnp.asarray(cent), bits=5)
    ent = sum(entropy_bytes(np.asarray(v.indices).reshape(-1)) for v in tree.values())
    print(f"\n-- {leaves} Codebook leaves of {side}x{side} (5 bits), per leaf")
    data = {e: coding.encode(tree, entropy=e) for e in ("huffman", "ans")}
    contenders = {}
    notes = {}
    for e in ("huffman", "ans"):
        contenders[f"encode ({e})"] = lambda e=e: coding.encode(tree, entropy=e)
        contenders[f"decode ({e})"] = lambda e=e: coding.decode(data[e])
        over = (len(data[e]) - ent) / leaves
        notes[f"encode ({e})"] = f"file {len(data[e]):,} B, {over:.1f} B/leaf over the entropy"
    # the coders alone, one stream per leaf (what the container adds is its own)
    streams = [np.asarray(v.indices).reshape(-1) for v in tree.values()]
    for name, coder in (("huffman", _huffman), ("ans", _ans)):
        sections = [coder.encode(x, 32, 5) for x in streams]
        contenders[f"coder only: {name} encode"] = lambda c=coder: [
            c.encode(x, 32, 5) for x in streams
        ]
        contenders[f"coder only: {name} decode"] = lambda c=coder, d=sections: [
            c.decode(b, side * side, 32, 5) for b in d
        ]
        over = (sum(map(len, sections)) - ent) / leaves
        notes[f"coder only: {name} encode"] = f"{over:.1f} B/stream over the entropy"
    contenders["memcpy of the indices"] = memcpy(streams)
    times = rounds(contenders, n_rounds)
    times = {k: [t / leaves for t in v] for k, v in times.items()}
    table(times, "encode (huffman)", notes, unit=1e-6)


def fresh_child(entropy):
    """In a new process: the first ``encode`` + ``decode`` of the 1M leaf, then steady state."""
    sym, cent, w = kmeans_indices()
    leaf = Codebook(jnp.asarray(sym.reshape(w.shape)), jnp.asarray(cent), bits=5)

    def once():
        start = time.perf_counter()
        np.asarray(coding.decode(coding.encode({"w": leaf}, entropy=entropy))["w"])
        return time.perf_counter() - start

    first = once()
    print(json.dumps({"first": first, "steady": min(once() for _ in range(5))}))


def fresh(n_processes, dahuffman_s):
    print(f"\n-- one-off encode + decode of 1M 5-bit symbols, {n_processes} fresh processes")
    times, notes = {}, {}
    for entropy in ("huffman", "ans"):
        runs = [json.loads(subprocess.run(
            [sys.executable, __file__, "--fresh-child", entropy],
            capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            for _ in range(n_processes)]
        first, steady = f"first call ({entropy})", f"steady state ({entropy})"
        times[first] = [r["first"] for r in runs]
        times[steady] = [r["steady"] for r in runs]
        ratios = [r["first"] / r["steady"] for r in runs]
        notes[first] = f"first / steady in its process: {min(ratios):.2f}-{max(ratios):.2f}x"
        if dahuffman_s == dahuffman_s:  # measured (not NaN)
            notes[first] += f"; dahuffman (steady) / first: {dahuffman_s / min(times[first]):.1f}x"
    table(times, "steady state (huffman)", notes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big", action="store_true", help="rANS at 10M and 40M symbols too")
    parser.add_argument("--fresh-child", choices=("huffman", "ans"), help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=("huffman", "fresh", "rans", "small"),
                        help="run one table")
    args = parser.parse_args()
    if args.fresh_child:
        fresh_child(args.fresh_child)
        return
    conditions("entropy coding: jaxrm.coding, dahuffman, constriction")
    run = (lambda name: args.only in (None, name))
    dahuffman_s = huffman(max(2, args.rounds // 2)) if run("huffman") else float("nan")
    if run("fresh"):
        fresh(3, dahuffman_s)
    # 1,024 symbols (a power of two: exact shares) and 1,000 (the rounding pass)
    sizes = [1000, 1024, 65_536, 1_000_000] + ([10_000_000, 40_000_000] if args.big else [])
    if run("rans"):
        rans(sizes, args.rounds)
    if run("small"):
        small_leaves(max(2, args.rounds // 2))


if __name__ == "__main__":
    main()
