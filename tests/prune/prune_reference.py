"""Independent references for the pruning tests (brute force, plain numpy)."""

import numpy as np


def top_k_reference(scores, k):
    """Brute force: sort all scores (NaN lowest), keep the first k, lower flat index first."""
    flat = np.concatenate([np.asarray(s, np.float64).ravel() for s in scores])
    flat = np.where(np.isnan(flat), -np.inf, flat)
    order = np.lexsort((np.arange(flat.size), -flat))
    keep = np.zeros(flat.size, bool)
    keep[order[:k]] = True
    out, start = [], 0
    for s in scores:
        out.append(keep[start : start + np.size(s)].reshape(np.shape(s)))
        start += np.size(s)
    return out
