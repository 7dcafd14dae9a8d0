"""GPTQ (Frantar et al. 2023): quantize weights column by column with Hessian error feedback."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import tree as jtree
from jaxrm.calib import Stats
from jaxrm.calib._solver import Grid, Plan, inverse_factor, params, solve
from jaxrm.quant._types import QArray

__all__ = ["gptq", "rtn"]


def _check(bits, group_size, block, damp):
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
    if group_size is not None and (not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size must be None or a positive int, got {group_size!r}")
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    if not np.isfinite(damp) or damp < 0:
        raise ValueError(f"damp must be a finite float >= 0, got {damp!r}")


def _block(block: int, d_in: int, group_size: int | None, path: str) -> int:
    b = min(block, d_in)
    if group_size and b % group_size and group_size % b:
        raise ValueError(
            f"block={block} and group_size={group_size} at leaf {path!r}: one must divide the other"
        )
    return b


def quantize_slice(w, h, grid: Grid, *, act_order, damp, block, path, index, identity=False):
    """GPTQ on one ``(d_out, d_in)`` matrix; returns ``(levels, scale, zero)`` (numpy)."""
    w = np.array(w, np.float32, copy=True)
    d_in = w.shape[1]
    diag = np.diagonal(h)
    w[:, diag <= 0] = 0.0  # features never active: the papers' code zeroes them
    perm = np.argsort(-diag, kind="stable") if act_order else np.arange(d_in)
    init, gid = None, None
    g = grid.group_size
    if act_order and g:
        # Static groups: parameters of each original group, fixed before the pass,
        # so the stored scales stay in the leaf's own column order.
        gw = jnp.asarray(w).reshape(w.shape[0], d_in // g, g)
        s, z = jax.vmap(lambda x: params(x, grid), in_axes=1, out_axes=1)(gw)
        init, gid = (s, z), perm // g
    if identity:
        u = np.eye(d_in)
    else:
        u, _ = inverse_factor(h[np.ix_(perm, perm)], damp, path=path, slice_index=index)
    plan = Plan(grid, None, _block(block, d_in, g, path))
    lv, scale, zero, _, _ = solve(w[:, perm], u, plan, gid=gid, init=init)
    levels = np.empty_like(np.asarray(lv))
    levels[:, perm] = np.asarray(lv)
    n_groups = d_in // g if g else 1
    return levels, np.asarray(scale)[:, :n_groups], np.asarray(zero)[:, :n_groups]


def build(leaf, ls, grid: Grid, results) -> QArray:
    """The ``QArray`` of a leaf from per-slice ``(levels, scale, zero)`` results."""
    levels = np.stack([r[0].T for r in results])  # (slices, d_in, d_out)
    scale = np.stack([r[1].T for r in results])  # (slices, groups, d_out)
    zero = np.stack([r[2].T for r in results])
    dtype = np.int8 if grid.symmetric else np.uint8
    dims = ls.group_dims(grid.group_size)
    grouped = [n // k for k, n in zip(dims, ls.shape) if 1 < k < n]
    return QArray(
        values=jnp.asarray(ls.unmatrix(levels).astype(dtype)),
        scale=jnp.asarray(ls.from_groups(scale, grid.group_size), jnp.float32),
        zero_point=jnp.asarray(ls.from_groups(zero, grid.group_size), jnp.float32),
        bits=grid.bits,
        axis=ls.out[0] if ls.out else None,
        dtype=jnp.dtype(leaf.dtype).name,
        group_size=grouped[0] if grouped else None,
    )


def _run(params_tree, stats, bits, group_size, act_order, damp, block, symmetric, where, rtn):
    if not isinstance(stats, Stats):
        raise TypeError(f"stats must be a jaxrm.calib.Stats, got {type(stats).__name__}")
    _check(bits, group_size, block, damp)
    grid = Grid(bits, symmetric, group_size)
    new = {}
    for path, leaf, ls in stats.pick(params_tree, where):
        ls.group_dims(group_size)  # validates the grouping early
        w3 = ls.matrix(np.asarray(leaf, np.float32))
        res = [
            quantize_slice(
                w3[i].T,
                ls.hessian[i],
                grid,
                act_order=act_order,
                damp=damp,
                block=block,
                path=path,
                index=i,
                identity=rtn,
            )
            for i in range(ls.n_slices)
        ]
        new[path] = build(leaf, ls, grid, res)
    return jtree.map_selected(lambda p, x: new[p], params_tree, lambda p, x: p in new)


def gptq(
    params: Any,
    stats: Stats,
    bits: int,
    *,
    group_size: int | None = None,
    act_order: bool = False,
    damp: float = 0.01,
    block: int = 128,
    symmetric: bool = False,
    where: jtree.Where = None,
) -> Any:
    """Quantizes weights with GPTQ's Hessian-based error compensation.

    For each leaf with statistics and each stacked slice, the weight is a
    ``(d_out, d_in)`` matrix over the input features recorded by
    [jaxrm.calib.collect][]. Columns are quantized in order (``act_order``:
    by decreasing ``diag H``) and each column's rounding error is spread over
    the remaining columns through the Cholesky factor of ``H^-1``, with lazy
    updates every ``block`` columns (the paper's Algorithm 1). Grid parameters
    are min/max per output channel, or per ``group_size`` consecutive input
    features (with ``act_order``, per group of the leaf's own column order,
    fixed before the pass, the "static groups" of the reference code).

    Args:
      params: the parameter pytree.
      stats: statistics of ``params`` from [jaxrm.calib.collect][].
      bits: bits of the integer grid, 2 to 8.
      group_size: input features per scale; ``None`` for one scale per channel.
      act_order: quantize columns in decreasing order of ``diag H``.
      damp: ``H + damp * mean(diag H) * I`` before inversion.
      block: columns per lazy batch update.
      symmetric: symmetric grid ``[-(2^(b-1)-1), 2^(b-1)-1]`` instead of
        the paper's asymmetric ``[0, 2^b - 1]`` with a zero point.
      where: leaves to quantize (default: every leaf with statistics).

    Returns:
      ``params`` with each chosen leaf a [jaxrm.quant.QArray][] (values of
      the leaf's shape; scale and zero point per slice, per channel, per group,
      see [jaxrm.calib.LeafStats.group_dims][]).

    Raises:
      ValueError: bad hyperparameters, statistics from another model, a
        selected leaf without statistics, or a singular Hessian (naming the leaf).
      TypeError: ``stats`` is not a ``Stats``.
    """
    return _run(params, stats, bits, group_size, act_order, damp, block, symmetric, where, False)


def rtn(
    params: Any,
    stats: Stats,
    bits: int,
    *,
    group_size: int | None = None,
    symmetric: bool = False,
    where: jtree.Where = None,
) -> Any:
    """Round-to-nearest on GPTQ's grid (the baseline of the GPTQ paper).

    Same grid, groups and ``QArray`` layout as [jaxrm.quant.gptq][], without
    error compensation; ``stats`` only supplies each leaf's axes.
    """
    return _run(params, stats, bits, group_size, False, 0.0, 128, symmetric, where, True)
