"""GPTQ on one square kernel: jaxrm against a numpy/scipy reference and Qwix's GPTQ.

One ``(n, n)`` float32 weight (rows = outputs) and a Hessian ``H = X^T X`` of
``4n`` correlated input rows; 4-bit, one scale per output channel, 128-column
blocks, ``damp=0.01``, in the order each implementation documents:

* jaxrm: the solver behind ``quant.gptq`` (``jaxrm.quant._gptq.quantize_slice``:
  float64 Cholesky of ``H^-1`` with scipy, then the jitted column loop);
* numpy: the paper's Algorithm 1 as its reference code writes it, in float32
  numpy with scipy's Cholesky, inverse and Cholesky again on one BLAS thread
  as jaxrm (the same asymmetric grid as jaxrm);
* Qwix: ``qwix.contrib.gptq_core.quantize_weight`` (symmetric absmax int4
  grid, eager per-column JAX ops, as ``qwix.contrib.gptq`` calls it).

Rounds are interleaved (jaxrm, numpy, Qwix, memcpy) after one warm-up call
each; min and median are printed beside ``os.getloadavg()``, with the
quantization error ``tr(dW H dW^T) / tr(W H W^T)`` of each result. The
"memcpy" row copies the weight into a preallocated buffer (one memory pass).
Run: ``python benchmarks/oneshot.py [--size 4096] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import threadpoolctl

from jaxrm.calib._solver import Grid
from jaxrm.quant._gptq import quantize_slice


def numpy_gptq(w, h, bits=4, block=128, damp=0.01):
    """GPTQ's reference algorithm in float32 numpy (per-channel asymmetric grid)."""
    w = w.astype(np.float32).copy()
    cols = w.shape[1]
    h = h.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h[np.diag_indices(cols)] += damp * np.mean(np.diag(h))
    with threadpoolctl.threadpool_limits(1, user_api="blas"):  # as jaxrm does, see calib
        hinv = scipy.linalg.cho_solve(scipy.linalg.cho_factor(h, lower=True), np.eye(cols))
        u = scipy.linalg.cholesky(hinv, lower=False).astype(np.float32)
    qmax = 2**bits - 1
    lo, hi = np.minimum(w.min(1), 0), np.maximum(w.max(1), 0)
    s = np.where(hi > lo, (hi - lo) / qmax, 1).astype(np.float32)
    z = np.round(-lo / s).astype(np.float32)
    q = np.zeros_like(w)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].copy()
        err = np.zeros_like(w1)
        for i in range(i2 - i1):
            x = w1[:, i]
            lv = np.clip(np.round(x / s) + z, 0, qmax)
            q[:, i1 + i] = lv
            e = (x - (lv - z) * s) / u[i1 + i, i1 + i]
            w1[:, i:] -= np.outer(e, u[i1 + i, i1 + i : i2])
            err[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return q, s, z


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-qwix", action="store_true")
    args = parser.parse_args()
    n = args.size
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n)).astype(np.float32) / np.sqrt(n)
    x = (rng.standard_normal((4 * n, n)) @ rng.standard_normal((n, n)) / np.sqrt(n)).astype(
        np.float32
    )
    h = x.astype(np.float64).T @ x.astype(np.float64)
    buf = np.empty_like(w)

    def run_jaxrm():
        lv, s, z = quantize_slice(
            w, h, Grid(4), act_order=False, damp=0.01, block=128, path="w", index=0
        )
        return (lv - z) * s

    def run_numpy():
        q, s, z = numpy_gptq(w, h)
        return (q - z[:, None]) * s[:, None]

    runs = {"jaxrm": run_jaxrm, "numpy": run_numpy}
    if not args.no_qwix:
        from qwix._src.core import qarray
        from qwix.contrib import gptq_core

        how = qarray.HowToQuantize(qtype=jnp.int4, channelwise_axes=[0])
        wj, hj = jnp.asarray(w), jnp.asarray(h, jnp.float32)

        def run_qwix():
            qa, _ = gptq_core.quantize_weight(wj, hj, how, blocksize=128, percdamp=0.01)
            return np.asarray(qarray.dequantize(qa))

        runs["qwix"] = run_qwix
    runs["memcpy"] = lambda: np.copyto(buf, w)
    outs = {k: jax.block_until_ready(f()) for k, f in runs.items()}  # warm-up
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, f in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t)

    def weighted(dw):
        dw = dw.astype(np.float64)
        return float(np.sum((dw @ h) * dw))

    base = weighted(w)
    print(f"GPTQ 4-bit per-channel, {n}x{n}, block 128; loadavg {os.getloadavg()}")
    print(f"{'impl':8} {'min s':>9} {'median s':>9} {'x jaxrm':>8} {'rel. error':>11}")
    for k, ts in times.items():
        err = ""
        if k != "memcpy":
            dw = w - np.asarray(outs[k], np.float32)
            err = f"{weighted(dw) / base:11.5f}"
        ratio = min(ts) / min(times["jaxrm"])
        print(f"{k:8} {min(ts):9.3f} {statistics.median(ts):9.3f} {ratio:8.2f} {err}")
    same = np.mean(np.isclose(outs["jaxrm"], outs["numpy"], atol=1e-6))
    print(f"jaxrm and numpy give the same dequantized weight at {100 * same:.2f}% of entries")


if __name__ == "__main__":
    main()
