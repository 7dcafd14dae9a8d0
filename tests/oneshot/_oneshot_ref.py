"""Float64 numpy references of GPTQ, SparseGPT and Wanda, written from the papers.

Straight loops over columns in the papers' notation (rows are output channels,
columns input features; ``H = X^T X`` over input rows), with the lazy block
update of GPTQ's Algorithm 1. Only numpy: nothing is shared with jaxrm.
"""

from __future__ import annotations

import numpy as np


def grid_params(x, bits, symmetric):
    """Per-row min/max scale and zero point (the reference code's quantizer)."""
    if symmetric:
        q = 2 ** (bits - 1) - 1
        amax = np.abs(x).max(axis=1)
        scale = np.where(amax > 0, amax / q, 1.0)
        return scale, np.zeros_like(scale), -q, q
    qmax = 2**bits - 1
    lo = np.minimum(x.min(axis=1), 0.0)
    hi = np.maximum(x.max(axis=1), 0.0)
    scale = (hi - lo) / qmax
    scale = np.where(scale > 0, scale, 1.0)
    return scale, np.clip(np.round(-lo / scale), 0, qmax), 0, qmax


def hinv_upper(h, damp):
    h = h.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    hinv = np.linalg.inv(h)
    return np.linalg.cholesky(hinv).T  # upper: hinv = U^T U


def gptq(w, h, bits, *, group_size=None, symmetric=False, damp=0.01, block=128):
    """Returns integer levels ``(rows, cols)`` and per-group (scale, zero) lists."""
    w = w.astype(np.float64).copy()
    rows, cols = w.shape
    w[:, np.diag(h) == 0] = 0.0
    u = hinv_upper(h, damp)
    levels = np.zeros_like(w)
    g = group_size or cols
    scales, zeros = np.zeros((rows, cols // g)), np.zeros((rows, cols // g))
    s, z, qmin, qmax = grid_params(w, bits, symmetric)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].copy()
        err = np.zeros_like(w1)
        for i in range(i2 - i1):
            c = i1 + i
            if c % g == 0:  # a group starts: its parameters from the current weights
                cur = np.concatenate([w1[:, i:], w[:, i2:]], axis=1)[:, :g]
                s, z, qmin, qmax = grid_params(cur, bits, symmetric)
                scales[:, c // g], zeros[:, c // g] = s, z
            x = w1[:, i]
            lv = np.clip(np.round(x / s) + z, qmin, qmax)
            q = (lv - z) * s
            levels[:, c] = lv
            e = (x - q) / u[c, c]
            w1[:, i:] -= np.outer(e, u[c, c:i2])
            err[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return levels, scales, zeros


def sparsegpt(w, h, *, sparsity=None, nm=None, damp=0.01, block=128):
    """Returns ``(keep, w_hat)``: the kept mask and the reconstructed weights.

    Unstructured: in each block, the entries of smallest ``w^2 / U_jj^2`` are
    pruned, as many as make the running total ``n - round((1 - s) n)`` at each
    block's end (exact counts). N:M: ``nm = (n, m)`` keeps ``n`` of every ``m``
    consecutive columns per row, chosen when a group starts.
    """
    w = w.astype(np.float64).copy()
    rows, cols = w.shape
    w[:, np.diag(h) == 0] = 0.0
    u = hinv_upper(h, damp)
    keep = np.ones_like(w, bool)
    total = rows * cols
    pruned_total = 0 if sparsity is None else total - round((1 - sparsity) * total)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].copy()
        err = np.zeros_like(w1)
        d = np.diag(u)[i1:i2]
        if sparsity is not None:
            end = round(pruned_total * i2 / cols)
            start = round(pruned_total * i1 / cols)
            score = (w1**2 / d[None, :] ** 2).reshape(-1)
            order = np.argsort(score, kind="stable")
            k1 = np.ones(score.size, bool)
            k1[order[: end - start]] = False
            keep[:, i1:i2] = k1.reshape(w1.shape)
        for i in range(i2 - i1):
            c = i1 + i
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                sc = w1[:, i : i + m] ** 2 / d[None, i : i + m] ** 2
                order = np.argsort(sc, axis=1, kind="stable")
                kk = np.ones_like(sc, bool)
                np.put_along_axis(kk, order[:, : m - n], False, axis=1)
                keep[:, c : c + m] = kk
            x = w1[:, i]
            q = np.where(keep[:, c], x, 0.0)
            e = (x - q) / u[c, c]
            w1[:, i:] -= np.outer(e, u[c, c:i2])
            w1[:, i] = q
            err[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return keep, w


def wanda(w, norms, *, sparsity=None, nm=None):
    """Kept mask of Wanda: per row, the largest ``|W_ij| * ||X_j||``."""
    score = np.abs(w) * norms[None, :]
    rows, cols = w.shape
    keep = np.zeros_like(w, bool)
    if sparsity is not None:
        k = round((1 - sparsity) * cols)
        order = np.argsort(-score, axis=1, kind="stable")
        np.put_along_axis(keep, order[:, :k], True, axis=1)
        return keep
    n, m = nm
    s = score.reshape(rows, cols // m, m)
    order = np.argsort(-s, axis=2, kind="stable")
    kk = np.zeros_like(s, bool)
    np.put_along_axis(kk, order[:, :, :n], True, axis=2)
    return kk.reshape(rows, cols)
