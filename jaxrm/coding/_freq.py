"""Symbol statistics shared by the entropy coders: quantized frequencies, entropy."""

from __future__ import annotations

import numpy as np

__all__ = ["entropy_bits", "quantize", "quantize_list"]


def quantize(counts: np.ndarray, precision: int, *, positive: bool = False) -> np.ndarray:
    """Frequencies summing to ``2**precision``, at least 1 for every used symbol.

    Each frequency is the count's share rounded down, the remainder going to
    the largest rounding losses (ties by symbol order), so the result depends
    on the histogram alone.

    Args:
      counts: non-negative integer histogram with at most ``2**precision``
        used symbols and at least one.
      precision: bits of the frequencies' total.
      positive: the caller promises every count is positive (skips the masks
        of unused symbols, which cost more than the arithmetic on small tables).

    Returns:
      ``int64`` frequencies, 0 exactly where ``counts`` is 0.
    """
    counts = np.asarray(counts, np.int64)
    top = 1 << precision
    exact = counts * (top / int(counts.sum()))
    f = exact.astype(np.int64)  # the floor: shares are non-negative
    used = None if positive else counts > 0
    if used is None:
        np.maximum(f, 1, out=f)
    else:
        np.maximum(f, used, out=f)  # at least 1 for every used symbol, 0 elsewhere
    diff = top - int(f.sum())
    if diff > 0:  # hand out the remainder by the largest rounding losses
        neg_loss = f - exact  # ascending order of this: largest loss first
        if used is not None and not used.all():
            neg_loss[~used] = np.inf
        f[np.argsort(neg_loss, kind="stable")[:diff]] += 1
    while diff < 0:  # clipping at 1 overshot: take from the largest
        order = np.argsort(-f, kind="stable")
        take = order[f[order] > 1][: -diff]
        f[take] -= 1
        diff += len(take)
    return f


def quantize_list(counts: list[int], precision: int) -> list[int]:
    """`quantize` of positive counts, in Python ints and floats: for short tables.

    The same frequencies as ``quantize(counts, precision, positive=True)``, step
    for step (the same float64 shares, floors and stable orders), without
    numpy's per-call cost, which is most of the work for a few dozen symbols.
    """
    top = 1 << precision
    scale = top / sum(counts)
    exact = [c * scale for c in counts]
    f = [int(e) or 1 for e in exact]  # the floor, at least 1
    diff = top - sum(f)
    if diff > 0:  # hand out the remainder by the largest rounding losses
        neg_loss = [a - e for a, e in zip(f, exact)]
        for i in sorted(range(len(f)), key=neg_loss.__getitem__)[:diff]:
            f[i] += 1
    while diff < 0:  # clipping at 1 overshot: take from the largest
        order = sorted(range(len(f)), key=f.__getitem__, reverse=True)
        take = [i for i in order if f[i] > 1][:-diff]
        for i in take:
            f[i] -= 1
        diff += len(take)
    return f


def entropy_bits(counts: np.ndarray) -> float:
    """Empirical entropy of a histogram, in bits for all its symbols together."""
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum()) if n else 0.0
