"""k-means weight sharing: jaxrm.quant.kmeans against scikit-learn's KMeans.

One float32 leaf (default 1000 x 1000, standard normal) is shared to 5 bits
(k = 32) from the same linear init (k points evenly spaced over [min, max]):

* jaxrm: ``quant.kmeans(..., init="linear", iters=300)`` (1-D Lloyd on the
  sorted weights, stopping at a fixed point or after 300 updates);
* scikit-learn: ``KMeans(32, init=<same centroids>, n_init=1, max_iter=300,
  tol=0, algorithm="lloyd")`` on the weights as a column.

Both inertias (sum of squared errors) are recomputed here in float64 from the
returned centroids and assignments. The contenders (and a memcpy of the leaf,
the one-memory-pass yardstick) run interleaved for ``--rounds`` rounds after a
warm-up (``_harness``); min and median are printed with the load average; jax
results are blocked on. Then the per-slice cost of a stacked kernel, and a
one-off ``quant.uniform`` in a fresh process against its steady state (one
subprocess per case). Run: ``python benchmarks/quant.py``.
"""

from __future__ import annotations

import argparse

import numpy as np
from _harness import RESNET18_SETUP, conditions, fresh_table, memcpy, rounds, table

from jaxrm import quant


def inertia(x: np.ndarray, decoded: np.ndarray) -> float:
    return float(np.sum((x.astype(np.float64) - decoded.astype(np.float64)) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--cols", type=int, default=1000)
    parser.add_argument("--bits", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    k = 2**args.bits
    init = np.linspace(float(x.min()), float(x.max()), k)
    conditions("k-means weight sharing: jaxrm.quant.kmeans, scikit-learn KMeans")

    def jaxrm_run(iters):
        return lambda: quant.kmeans({"w": x}, args.bits, init="linear", iters=iters)["w"]

    contenders = {
        "jaxrm kmeans, 300 iters": jaxrm_run(300),
        "jaxrm kmeans, to fixed point": jaxrm_run(100_000),
        "memcpy of the leaf": memcpy([x]),
    }
    notes = {}
    inertias = {}
    for name in list(contenders)[:2]:
        inertias[name] = inertia(x, np.asarray(contenders[name]().dequantize()))
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        KMeans = None
        print("scikit-learn is not installed: only jaxrm is timed")
    if KMeans is not None:
        column = x.reshape(-1, 1)

        def sk_run():
            return KMeans(
                k, init=init.reshape(-1, 1), n_init=1, max_iter=300, tol=0, algorithm="lloyd"
            ).fit(column)

        km = sk_run()
        name = f"scikit-learn KMeans ({km.n_iter_} iters)"
        contenders[name] = sk_run
        inertias[name] = inertia(x, km.cluster_centers_[km.labels_, 0].reshape(x.shape))
    ref = min(inertias.values())
    for name, e in inertias.items():
        notes[name] = f"inertia {e:.3f} ({e / ref:.6f} x the lowest)"
    print(f"one {args.rows}x{args.cols} float32 leaf, {args.bits} bits (k={k}), linear init")
    table(rounds(contenders, args.rounds), "jaxrm kmeans, 300 iters", notes)
    per_slice_ratio(args.rounds, args.bits)
    fresh_process_calls()


FRESH_CASES = {
    "uniform 8 bits per channel, ResNet-18 kernels (11.7M)": RESNET18_SETUP
    + "from jaxrm import quant\ncall = lambda: quant.uniform(tree, 8, axis=-1)",
    "uniform 8 bits per tensor, 1M weights": """
import numpy as np
from jaxrm import quant
rng = np.random.default_rng(0)
tree = {f"Dense_{i}": {"kernel": rng.standard_normal(s).astype(np.float32)}
        for i, s in enumerate([(784, 1024), (1024, 200), (200, 10)])}
call = lambda: quant.uniform(tree, 8)
""",
}


def fresh_process_calls() -> dict[str, float]:
    """First call in a fresh process (compilation included) against the steady state."""
    return fresh_table("fresh process: quant.uniform on numpy trees", FRESH_CASES)


def per_slice_ratio(n_rounds: int, bits: int, layers: int = 12, width: int = 768) -> None:
    """A stacked ``(layers, width, width)`` kernel against the same slices as separate leaves.

    Per-slice scales and codebooks must cost about what the unstacked tree
    costs (the layouts' target: at most 1.2x); both results are checked equal.
    """
    w = np.random.default_rng(1).standard_normal((layers, width, width)).astype(np.float32)
    stacked = {"layers": {"kernel": w}}
    separate = {f"layer_{i}": {"kernel": w[i]} for i in range(layers)}
    rules = dict(stacked=0)
    a = quant.dequantize(quant.uniform(stacked, 8, axis=-1, **rules))["layers"]["kernel"]
    b = quant.dequantize(quant.uniform(separate, 8, axis=-1))
    assert all(np.array_equal(a[i], b[f"layer_{i}"]["kernel"]) for i in range(layers))
    contenders = {
        "uniform, stacked": lambda: quant.uniform(stacked, 8, axis=-1, **rules),
        "uniform, separate leaves": lambda: quant.uniform(separate, 8, axis=-1),
        "kmeans, stacked": lambda: quant.kmeans(stacked, bits, iters=30, **rules),
        "kmeans, separate leaves": lambda: quant.kmeans(separate, bits, iters=30),
        "memcpy of the kernel": memcpy([w]),
    }
    print(f"\nper-slice cost: one ({layers}, {width}, {width}) kernel vs {layers} leaves")
    times = rounds(contenders, n_rounds)
    table(times, "uniform, separate leaves")
    for name in ("uniform", "kmeans"):
        ratio = min(times[f"{name}, stacked"]) / min(times[f"{name}, separate leaves"])
        print(f"{name}: stacked / separate = {ratio:.2f}x (min of rounds; target <= 1.2x)")


if __name__ == "__main__":
    main()
