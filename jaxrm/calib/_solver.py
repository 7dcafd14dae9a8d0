"""The column-by-column second-order solver that GPTQ and SparseGPT share.

Both methods walk the input features (columns of ``W``, rows = output channels)
in order, fix each column (quantize it, prune some of its entries, or both)
and spread the error over the columns not yet fixed through the upper Cholesky
factor ``U`` of ``H^-1`` (Frantar et al. 2023, Algorithm 1; Frantar & Alistarh
2023, Algorithm 1). Updates inside a block of ``block`` columns are applied
column by column; the rest of the matrix gets them once per block as one
matrix product (the "lazy batch" update). It lives in ``calib`` so that
``quant`` and ``prune`` both use it without importing each other.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import threadpoolctl

__all__ = ["Grid", "Plan", "inverse_factor", "solve"]


@dataclasses.dataclass(frozen=True)
class Grid:
    """A uniform integer grid, its parameters per row and per group of columns."""

    bits: int
    symmetric: bool = False
    group_size: int | None = None  # None: one group of all columns

    @property
    def range(self) -> tuple[int, int]:
        if self.symmetric:
            q = 2 ** (self.bits - 1) - 1
            return -q, q
        return 0, 2**self.bits - 1


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to do with each column: quantize (``grid``) and/or prune (``prune``).

    ``prune`` is ``None``, ``("unstructured",)`` (counts per block passed at run
    time) or ``("nm", n, m)`` (keep ``n`` of every ``m`` columns in each row).
    """

    grid: Grid | None
    prune: tuple | None
    block: int


def params(x, grid: Grid):
    """Scale and zero point per row of ``x`` (``(rows, k)``), min/max of the grid."""
    qmin, qmax = grid.range
    return _params(x, grid.symmetric, qmin, qmax)


def _params(x, symmetric, qmin, qmax):
    if symmetric:
        amax = jnp.max(jnp.abs(x), axis=1)
        scale = amax / qmax
        scale = jnp.where(scale > 0, scale, 1.0)
        return scale, jnp.zeros_like(scale)
    lo = jnp.minimum(jnp.min(x, axis=1), 0.0)
    hi = jnp.maximum(jnp.max(x, axis=1), 0.0)
    scale = (hi - lo) / (qmax - qmin)
    scale = jnp.where(scale > 0, scale, 1.0)
    return scale, jnp.clip(jnp.round(-lo / scale), qmin, qmax)


def inverse_factor(h: np.ndarray, damp: float, *, path: str = "", slice_index: int = 0):
    """Upper Cholesky factor of the damped ``H^-1``, and the dead (never active) features.

    ``H + damp * mean(diag H) * I`` is inverted in float64; features whose
    diagonal is 0 get ``H_jj = 1`` (their weights are set to 0 by the caller,
    as in the papers' code).

    Raises:
      ValueError: ``H`` is not positive definite after damping (naming the leaf).
    """
    h = np.array(h, np.float64, copy=True)
    dead = np.diagonal(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diagonal(h)))
    # U with H^-1 = U^T U from one Cholesky factorization: if J reverses the
    # order, J H J = L L^T gives H = (J L J)(J L J)^T, so U = J L^-1 J. This
    # costs a third of inverting H and factorizing the inverse again.
    # One BLAS thread: threaded OpenBLAS Cholesky ran 35x slower than one
    # thread on a contended 2-core machine (5.4 s against 0.14 s at n = 1024).
    try:
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            low = scipy.linalg.cholesky(h[::-1, ::-1], lower=True, check_finite=True)
            inv, info = scipy.linalg.lapack.dtrtri(low, lower=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"dtrtri info {info}")
    except (np.linalg.LinAlgError, ValueError) as e:
        raise ValueError(
            f"stats at leaf {path!r} (slice {slice_index}): the Hessian is singular or not "
            f"finite after damping with damp={damp}; raise damp or calibrate on more data"
        ) from e
    u = np.ascontiguousarray(np.tril(inv)[::-1, ::-1])
    return u, dead


def _pad_to(c: int, plan: Plan) -> int:
    step = plan.block
    if plan.grid is not None and plan.grid.group_size:
        step = math.lcm(step, plan.grid.group_size)
    if plan.prune is not None and plan.prune[0] == "nm":
        step = math.lcm(step, plan.prune[2])
    return -(-c // step) * step


def solve(w, u, plan: Plan, *, gid=None, init=None, prune_counts=None, valid=None):
    """Fixes the columns of ``w`` in order, compensating through ``u``.

    Args:
      w: ``(rows, cols)`` float weights (rows are output channels).
      u: ``(cols, cols)`` upper Cholesky factor of ``H^-1``.
      plan: the static plan.
      gid: ``(cols,)`` group index of each column (default ``col // group_size``).
      init: ``(scale, zero)`` of shape ``(rows, groups)`` to use instead of
        computing them (per-channel or static groups).
      prune_counts: ``(n_blocks,)`` entries to prune per block (unstructured).
      valid: ``(cols,)`` bool, False for padding columns (never pruned).

    Returns:
      ``(levels, scale, zero, keep, w_hat)``: integer levels (as floats),
      grid parameters ``(rows, groups)``, the kept-entry mask and the fixed
      weights (dequantized, pruned entries 0). Inputs are padded internally.
    """
    rows, cols = w.shape
    cp = _pad_to(cols, plan)
    pad = cp - cols
    w = jnp.pad(jnp.asarray(w, jnp.float32), ((0, 0), (0, pad)))
    u = np.pad(np.asarray(u, np.float64), ((0, pad), (0, pad)))
    u[np.arange(cols, cp), np.arange(cols, cp)] = 1.0
    g = plan.grid.group_size if plan.grid is not None and plan.grid.group_size else cp
    n_groups = cp // g
    if gid is None:
        gid = np.arange(cp) // g
    else:
        gid = np.concatenate([np.asarray(gid), np.arange(cols, cp) // g])
    if valid is None:
        valid = np.ones(cols, bool)
    valid = np.concatenate([np.asarray(valid, bool), np.zeros(pad, bool)])
    dynamic = init is None and plan.grid is not None
    if init is None:
        init = (jnp.ones((rows, n_groups), jnp.float32), jnp.zeros((rows, n_groups), jnp.float32))
    counts = np.zeros(cp // plan.block, np.int32)
    if prune_counts is not None:
        counts[: len(prune_counts)] = prune_counts
    out = _solve(
        w,
        jnp.asarray(u, jnp.float32),
        jnp.asarray(gid, jnp.int32),
        jnp.asarray(valid),
        jnp.asarray(init[0], jnp.float32),
        jnp.asarray(init[1], jnp.float32),
        jnp.asarray(counts, jnp.int32),
        jnp.asarray(plan.grid.range if plan.grid is not None else (0, 0), jnp.float32),
        plan=plan
        if plan.grid is None
        else dataclasses.replace(plan, grid=dataclasses.replace(plan.grid, bits=8)),
        dynamic=dynamic,
    )
    levels, scale, zero, keep, w_hat = out
    return levels[:, :cols], scale, zero, keep[:, :cols], w_hat[:, :cols]


def _ranks(x, axis):
    """Rank of each entry along ``axis`` (0 = smallest), ties by position."""
    order = jnp.argsort(x, axis=axis, stable=True)
    return jnp.argsort(order, axis=axis, stable=True)


@functools.partial(jax.jit, static_argnames=("plan", "dynamic"))
def _solve(w, u, gid, valid, scale0, zero0, counts, qrange, *, plan: Plan, dynamic: bool):
    # ``plan.grid.bits`` is a placeholder here: the grid range ``qrange`` is
    # traced, so one compilation serves every bit width.
    rows, cp = w.shape
    b = plan.block
    grid = plan.grid
    g = grid.group_size if grid is not None and grid.group_size else cp
    qmin, qmax = qrange[0], qrange[1]
    sym = grid is not None and grid.symmetric
    d = jnp.diagonal(u)

    def regroup_from(x, sz, grp):
        new = _params(x, sym, qmin, qmax)
        return sz[0].at[:, grp].set(new[0]), sz[1].at[:, grp].set(new[1])

    def block_step(k, carry):
        w, lv, keep, scale, zero = carry
        i1 = k * b
        w1 = jax.lax.dynamic_slice(w, (0, i1), (rows, b))
        if grid is not None and dynamic and g > b:
            scale, zero = jax.lax.cond(
                i1 % g == 0,
                lambda sz: regroup_from(jax.lax.dynamic_slice(w, (0, i1), (rows, g)), sz, i1 // g),
                lambda sz: sz,
                (scale, zero),
            )
        dblk = jax.lax.dynamic_slice(d, (i1,), (b,))
        ublk = jax.lax.dynamic_slice(u, (i1, i1), (b, b))
        gblk = jax.lax.dynamic_slice(gid, (i1,), (b,))
        keep1 = jnp.ones((rows, b), bool)
        if plan.prune is not None and plan.prune[0] == "unstructured":
            vblk = jax.lax.dynamic_slice(valid, (i1,), (b,))
            score = jnp.where(vblk[None, :], jnp.square(w1) / jnp.square(dblk)[None, :], jnp.inf)
            keep1 = _ranks(score.reshape(-1), 0).reshape(rows, b) >= counts[k]

        def col_step(i, c):
            w1, err1, lv1, keep1, scale, zero = c
            if plan.prune is not None and plan.prune[0] == "nm":
                n, m = plan.prune[1], plan.prune[2]

                def select(keep1):
                    sl = jax.lax.dynamic_slice(w1, (0, i), (rows, m))
                    ds = jax.lax.dynamic_slice(dblk, (i,), (m,))
                    r = _ranks(jnp.square(sl) / jnp.square(ds)[None, :], 1)
                    return jax.lax.dynamic_update_slice(keep1, r >= m - n, (0, i))

                keep1 = jax.lax.cond(i % m == 0, select, lambda k: k, keep1)
            if grid is not None and dynamic and g <= b:
                scale, zero = jax.lax.cond(
                    i % g == 0,
                    lambda sz: regroup_from(
                        jax.lax.dynamic_slice(w1, (0, i), (rows, g)), sz, (i1 + i) // g
                    ),
                    lambda sz: sz,
                    (scale, zero),
                )
            x = w1[:, i]
            kept = keep1[:, i]
            q = jnp.where(kept, x, 0.0)
            if grid is not None:
                s, z = scale[:, gblk[i]], zero[:, gblk[i]]
                level = jnp.where(kept, jnp.clip(jnp.round(q / s) + z, qmin, qmax), z)
                q = (level - z) * s
                lv1 = lv1.at[:, i].set(level)
            e = (x - q) / dblk[i]
            w1 = w1 - e[:, None] * ublk[i][None, :]
            w1 = w1.at[:, i].set(q)
            return w1, err1.at[:, i].set(e), lv1, keep1, scale, zero

        zeros = jnp.zeros((rows, b), jnp.float32)
        w1, err1, lv1, keep1, scale, zero = jax.lax.fori_loop(
            0, b, col_step, (w1, zeros, zeros, keep1, scale, zero)
        )
        urows = jax.lax.dynamic_slice(u, (i1, 0), (b, cp))
        # Columns before the block's end get 0 (u is upper triangular) or are
        # overwritten with the block's fixed values right after.
        w = w - jnp.matmul(err1, urows, precision=jax.lax.Precision.HIGHEST)
        w = jax.lax.dynamic_update_slice(w, w1, (0, i1))
        lv = jax.lax.dynamic_update_slice(lv, lv1, (0, i1))
        keep = jax.lax.dynamic_update_slice(keep, keep1, (0, i1))
        return w, lv, keep, scale, zero

    lv = jnp.zeros((rows, cp), jnp.float32)
    keep = jnp.ones((rows, cp), bool)
    w, lv, keep, scale, zero = jax.lax.fori_loop(
        0, cp // b, block_step, (w, lv, keep, scale0, zero0)
    )
    return lv, scale, zero, keep, w
