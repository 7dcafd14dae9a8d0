"""Where a short rANS stream's time goes: each step of ``_ans.encode`` / ``decode``.

The steps run cumulatively, in the coder's order and through its own helpers
(histogram; + table; + model and rank table; + rank gather; + constriction's
coder; the whole call), interleaved round by round; a step's cost is the
difference of consecutive minima. Times are CPU time of this process
(``time.process_time``), steadier than wall time on a shared machine, beside
constriction called bare (histogram, model, coder) as in ``coding.py``.
Run: ``python benchmarks/coding_parts.py [--n 1024] [--rounds 20]``.
"""

from __future__ import annotations

import argparse
import time

import constriction
import numpy as np
from _harness import conditions, load
from coding import constriction_bare

from jaxrm.coding import _ans, _bits
from jaxrm.coding._bits import ByteReader, unpack_fixed


def best(steps: dict, rounds: int, calls: int) -> dict[str, float]:
    out = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, f in steps.items():
            start = time.process_time()
            for _ in range(calls):
                f()
            out[name] = min(out[name], (time.process_time() - start) / calls)
    return out


def encode_steps(sym, alphabet=32, width=5):
    n = len(sym)

    def histogram():
        counts = _bits.histogram(sym, alphabet)
        return counts, counts.nonzero()[0]

    def table():
        counts, used = histogram()
        return used, _ans._table(counts, used, n, width)

    def model():
        used, (head, weights) = table()
        rank = np.zeros(alphabet, np.int32)
        rank[used] = np.arange(len(used), dtype=np.int32)
        return head, _ans._model(weights), rank

    def gather():
        head, m, rank = model()
        return head, m, rank.take(sym)  # the general case: a rank table

    def coder():
        head, m, ranks = gather()
        c = constriction.stream.stack.AnsCoder()
        c.encode_reverse(ranks, m)
        return head + c.get_compressed().astype("<u4").tobytes()

    return {"histogram and used symbols": histogram, "+ table (frequencies, packing)": table,
            "+ model and rank table": model, "+ rank gather": gather,
            "+ constriction's coder": coder,
            "whole _ans.encode": lambda: _ans.encode(sym, alphabet, width)}


def decode_steps(data, n, alphabet=32, width=5):
    def symbols():
        r = ByteReader(data)
        r.pos = 4
        return r, _ans._read_symbols(r, r.uint(1), alphabet, width)

    def frequencies():
        r, used = symbols()
        m = len(used)
        p, w = r.uint(1), r.uint(1)
        freq = unpack_fixed(r.take(-(-m * w // 8)), m, w)
        scale = float(1 << (_ans.PRECISION - p))
        weights = freq * scale
        weights += scale - 1.0
        return r, used, weights, int(freq.sum())

    def model():
        r, used, weights, _ = frequencies()
        words = np.frombuffer(r.take(r.remaining()), "<u4")
        return used, constriction.stream.stack.AnsCoder(words), _ans._model(weights)

    def coder():
        used, c, m = model()
        return used, c.decode(m, n)

    return {"header and used symbols": symbols, "+ frequencies and weights": frequencies,
            "+ words, coder and model": model, "+ constriction's decode": coder,
            "whole _ans.decode": lambda: _ans.decode(data, n, alphabet, width)}


def bare(sym):
    encode, decode, _ = constriction_bare(constriction, sym)
    return {"constriction encode (bare)": encode, "constriction decode (bare)": decode}


def show(times: dict[str, float]) -> None:
    prev = 0.0
    for name, t in times.items():
        step = t - prev if name.startswith("+") else t
        print(f"  {name:32s} {t * 1e6:8.2f} us  (step {step * 1e6:6.2f} us)")
        prev = t


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 1024])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    conditions("rANS steps on short streams: CPU time per call, min over rounds")
    for n in args.n:
        sym = np.clip(np.round(np.random.default_rng(0).normal(16, 4, n)), 0, 31)
        sym = sym.astype(np.uint8)
        data = _ans.encode(sym, 32, 5)
        assert np.array_equal(_ans.decode(data, n, 32, 5), sym)
        used = np.count_nonzero(np.bincount(sym, minlength=32))
        calls = max(1, 300_000 // n)
        print(f"\n-- {n:,} symbols, {used} used, {calls} calls a round, {args.rounds} rounds")
        times = best({**encode_steps(sym), **decode_steps(data, n), **bare(sym)}, args.rounds,
                     calls)
        show(times)
    print(f"({load()})")


if __name__ == "__main__":
    main()
