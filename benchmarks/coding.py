"""Entropy coding speed and size: jaxrm.coding against dahuffman and constriction.

The stream: k-means indices (32 clusters, 5 bits) of a normal 1000x1000 leaf,
1M symbols. Huffman: jaxrm's canonical Huffman (vectorised numpy) against
dahuffman (pure Python), encode + decode, and the size of the whole .jrm file
against dahuffman's bitstream. ANS: jaxrm's interleaved rANS against the
empirical entropy and, if installed, against constriction's stack ANS coder.

Run: python benchmarks/coding.py
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from jaxrm import coding
from jaxrm.coding import _ans, _huffman
from jaxrm.quant._types import Codebook


def best_of(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


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
    return idx.astype(np.int64), cent.astype(np.float32), w.shape


def main():
    sym, cent, shape = kmeans_indices()
    n = len(sym)
    counts = np.bincount(sym, minlength=32)
    p = counts[counts > 0] / n
    entropy_bytes = float(-(p * np.log2(p)).sum()) * n / 8
    rows = []

    def huffman():
        data = _huffman.encode(sym, 32, 5)
        assert np.array_equal(_huffman.decode(data, n, 32, 5), sym)

    t_h = best_of(huffman, 5)
    h_bytes = len(_huffman.encode(sym, 32, 5))
    leaf = Codebook(jnp.asarray(sym.reshape(shape).astype(np.uint8)), jnp.asarray(cent), bits=5)
    file_bytes = len(coding.encode({"w": leaf}))
    t_file = best_of(lambda: coding.decode(coding.encode({"w": leaf}))["w"].block_until_ready(), 3)

    try:
        from dahuffman import HuffmanCodec
    except ImportError:
        HuffmanCodec = None
    if HuffmanCodec is not None:
        symbols = sym.tolist()

        def dahuff():
            codec = HuffmanCodec.from_data(symbols)
            assert codec.decode(codec.encode(symbols)) == symbols

        t_d = best_of(dahuff, 2)
        codec = HuffmanCodec.from_data(symbols)
        d_bytes = len(codec.encode(symbols))
        rows.append(("Huffman enc+dec (s)", t_h, t_d, t_d / t_h))
        rows.append(("Huffman stream (bytes)", h_bytes, d_bytes, h_bytes / d_bytes))
        rows.append((".jrm file (bytes)", file_bytes, d_bytes, file_bytes / d_bytes))
    else:
        rows.append(("Huffman enc+dec (s)", t_h, float("nan"), float("nan")))

    def ans():
        data = _ans.encode(sym, 32, 5)
        assert np.array_equal(_ans.decode(data, n, 32, 5), sym)

    t_a = best_of(ans, 3)
    a_bytes = len(_ans.encode(sym, 32, 5))
    rows.append(("rANS stream vs entropy (bytes)", a_bytes, entropy_bytes, a_bytes / entropy_bytes))
    try:
        import constriction
    except ImportError:
        constriction = None
    if constriction is not None:
        used = np.flatnonzero(counts)
        model = constriction.stream.model.Categorical(counts[used] / n, perfect=False)
        dense = np.searchsorted(used, sym).astype(np.int32)

        def constr():
            enc = constriction.stream.stack.AnsCoder()
            enc.encode_reverse(dense, model)
            dec = constriction.stream.stack.AnsCoder(enc.get_compressed())
            assert np.array_equal(dec.decode(model, n), dense)

        t_c = best_of(constr, 3)
        enc = constriction.stream.stack.AnsCoder()
        enc.encode_reverse(dense, model)
        c_bytes = enc.get_compressed().nbytes
        rows.append(("rANS enc+dec (s)", t_a, t_c, t_a / t_c))
        rows.append(("rANS vs constriction (bytes)", a_bytes, c_bytes, a_bytes / c_bytes))
    else:
        rows.append(("rANS enc+dec (s)", t_a, float("nan"), float("nan")))

    print(f"1M 5-bit k-means indices, empirical entropy {8 * entropy_bytes / n:.4f} bits/symbol")
    print(f"full .jrm encode+decode of the Codebook leaf (Huffman): {t_file:.3f} s")
    print()
    print(f"| {'measure':32} | {'jaxrm':>12} | {'peer':>12} | {'ratio':>8} |")
    print(f"|{'-' * 34}|{'-' * 14}:|{'-' * 14}:|{'-' * 10}:|")
    for name, a, b, r in rows:
        fa = f"{a:.4f}" if isinstance(a, float) and a < 100 else f"{a:,.0f}"
        fb = f"{b:.4f}" if isinstance(b, float) and b < 100 else f"{b:,.0f}"
        print(f"| {name:32} | {fa:>12} | {fb:>12} | {r:8.4f} |")
    print()
    print("ratios: time rows are peer/jaxrm for Huffman (speed-up) and jaxrm/peer for rANS;")
    print("size rows are jaxrm/peer (1.0 = same size).")


if __name__ == "__main__":
    main()
