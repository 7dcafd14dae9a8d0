"""k-means weight sharing: jaxrm.quant.kmeans against scikit-learn's KMeans.

One float32 leaf (default 1000 x 1000, standard normal) is shared to 5 bits
(k = 32) from the same linear init (k points evenly spaced over [min, max]):

* jaxrm: ``quant.kmeans(..., init="linear", iters=300)`` (1-D Lloyd on the
  sorted weights, stopping at a fixed point or after 300 updates);
* scikit-learn: ``KMeans(32, init=<same centroids>, n_init=1, max_iter=300,
  tol=0, algorithm="lloyd")`` on the weights as a column.

Both inertias (sum of squared errors) are recomputed here in float64 from the
returned centroids and assignments. Times are the best of ``--repeats`` runs
after a warm-up; jax results are blocked on. Run: ``python benchmarks/quant.py``.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxrm import quant


def best_time(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    return min(times), out


def inertia(x: np.ndarray, decoded: np.ndarray) -> float:
    return float(np.sum((x.astype(np.float64) - decoded.astype(np.float64)) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--cols", type=int, default=1000)
    parser.add_argument("--bits", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sk-repeats", type=int, default=2)
    args = parser.parse_args()

    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    k = 2**args.bits
    init = np.linspace(float(x.min()), float(x.max()), k)
    rows = []

    def jaxrm_run(iters):
        return lambda: quant.kmeans({"w": x}, args.bits, init="linear", iters=iters)["w"]

    t_300, cb_300 = best_time(jaxrm_run(300), args.repeats)
    t_fix, cb_fix = best_time(jaxrm_run(100_000), args.repeats)
    e_300 = inertia(x, np.asarray(cb_300.dequantize()))
    e_fix = inertia(x, np.asarray(cb_fix.dequantize()))
    rows.append(("jaxrm kmeans, 300 iters", t_300, e_300))
    rows.append(("jaxrm kmeans, to fixed point", t_fix, e_fix))

    try:
        from sklearn.cluster import KMeans
    except ImportError:
        KMeans = None
        print("scikit-learn is not installed: only jaxrm is timed")
    t_sk = e_sk = None
    if KMeans is not None:
        column = x.reshape(-1, 1)

        def sk_run():
            return KMeans(
                k, init=init.reshape(-1, 1), n_init=1, max_iter=300, tol=0, algorithm="lloyd"
            ).fit(column)

        t_sk, km = best_time(sk_run, args.sk_repeats)
        decoded = km.cluster_centers_[km.labels_, 0].reshape(x.shape)
        e_sk = inertia(x, decoded)
        rows.append((f"scikit-learn KMeans ({km.n_iter_} iters)", t_sk, e_sk))

    print(f"\nk-means weight sharing of one {args.rows}x{args.cols} float32 leaf, "
          f"{args.bits} bits (k={k}), linear init; best of {args.repeats} "
          f"(scikit-learn: {args.sk_repeats})\n")
    head = f"| {'method':<34} | {'time (s)':>9} | {'inertia':>12} |"
    if t_sk is not None:
        head += f" {'speedup vs sklearn':>18} | {'inertia / sklearn':>17} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for name, t, e in rows:
        line = f"| {name:<34} | {t:>9.4f} | {e:>12.3f} |"
        if t_sk is not None:
            line += f" {t_sk / t:>17.1f}x | {e / e_sk:>17.6f} |"
        print(line)
    stacked_vs_separate(args.repeats)


def stacked_vs_separate(repeats: int, layers: int = 8, d: int = 256) -> None:
    """Per-slice handling of one ``(L, d, d)`` stacked leaf against the same L
    slices as separate leaves (the cost of treating each slice as a layer)."""
    import os

    x = np.random.default_rng(1).standard_normal((layers, d, d)).astype(np.float32)
    stacked = {"kernel": x}
    separate = {f"l{i}": {"kernel": x[i]} for i in range(layers)}
    print(f"\nper-slice handling, {layers} x {d} x {d}, load {os.getloadavg()}")
    print(f"| {'step':<26} | {'stacked (s)':>11} | {'separate (s)':>12} | {'ratio':>6} |")
    print(f"|{'-' * 28}|{'-' * 13}|{'-' * 14}|{'-' * 8}|")
    cases = {
        "uniform 8 bit, axis=-1": lambda t, st: quant.uniform(t, 8, axis=-1, stacked=st),
        "kmeans 4 bit": lambda t, st: quant.kmeans(t, 4, stacked=st),
    }
    for name, fn in cases.items():
        ts = []
        for _ in range(repeats):  # interleaved, so load changes hit both sides
            ts.append((best_time(lambda fn=fn: fn(stacked, 0), 1)[0],
                       best_time(lambda fn=fn: fn(separate, None), 1)[0]))
        a, b = min(t[0] for t in ts), min(t[1] for t in ts)
        print(f"| {name:<26} | {a:>11.4f} | {b:>12.4f} | {a / b:>6.2f} |")


if __name__ == "__main__":
    main()
