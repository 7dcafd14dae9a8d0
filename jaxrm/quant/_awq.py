"""Activation-aware scaling: AWQ (Lin et al. 2024) and SmoothQuant (Xiao et al. 2023)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxrm import tree as jtree
from jaxrm.calib import LeafStats, Stats
from jaxrm.calib._solver import Grid
from jaxrm.quant._gptq import _check, build, quantize_slice

__all__ = ["awq", "smooth"]


def _rtn_error(w, h, s, grid: Grid, g: int) -> float:
    """``tr(dW^T H dW)`` of ``W - RTN(diag(s) W) / s`` (``w``: ``(d_in, d_out)``)."""
    ws = w * s[:, None]
    d_in, d_out = ws.shape
    x = ws.reshape(d_in // g, g, d_out)
    qmin, qmax = grid.range
    if grid.symmetric:
        scale = np.abs(x).max(axis=1, keepdims=True) / qmax
        scale = np.where(scale > 0, scale, 1.0)
        zero = np.zeros_like(scale)
    else:
        lo = np.minimum(x.min(axis=1, keepdims=True), 0)
        hi = np.maximum(x.max(axis=1, keepdims=True), 0)
        scale = np.where(hi > lo, (hi - lo) / (qmax - qmin), 1.0)
        zero = np.clip(np.round(-lo / scale), qmin, qmax)
    q = (np.clip(np.round(x / scale) + zero, qmin, qmax) - zero) * scale
    dw = w - q.reshape(d_in, d_out) / s[:, None]
    return float(np.sum((h @ dw) * dw))


def _input_shape(ls: LeafStats) -> tuple[int, ...]:
    return tuple(1 if a in ls.out else n for a, n in enumerate(ls.shape))


def _to_leaf(ls: LeafStats, s: np.ndarray) -> np.ndarray:
    """``(n_slices, d_in)`` per-input values in the leaf's coordinates (1 on output axes)."""
    full = ls.unmatrix(np.broadcast_to(s[:, :, None], (ls.n_slices, ls.d_in, ls.d_out)))
    idx = tuple(slice(0, 1) if a in ls.out else slice(None) for a in range(len(ls.shape)))
    return np.ascontiguousarray(full[idx])


def awq(
    params: Any,
    stats: Stats,
    bits: int,
    *,
    group_size: int | None = None,
    grid: int = 20,
    symmetric: bool = False,
    where: jtree.Where = None,
) -> tuple[Any, Any]:
    """AWQ: per-input-channel scales searched on the calibration data, then rounding.

    For each slice, ``s = mean|x|^a`` (normalised by ``sqrt(max s * min s)``) for
    ``a`` in ``grid`` points of ``[0, 1)``; the ``a`` whose
    ``W - RTN(diag(s) W) / s`` has the least ``tr(dW^T H dW)`` (the output
    error on the calibration inputs) is kept. ``a = 0`` is plain RTN, so the
    result is never worse than RTN on the calibration data.

    Args:
      params: the parameter pytree.
      stats: statistics of ``params`` from [jaxrm.calib.collect][].
      bits: bits of the grid, 2 to 8.
      group_size: input features per scale (``None``: per channel).
      grid: number of exponents searched.
      symmetric: symmetric grid instead of the asymmetric one.
      where: leaves to quantize (default: every leaf with statistics).

    Returns:
      ``(tree, scales)``: ``tree`` holds ``QArray`` leaves of ``diag(s) W``;
      ``scales`` holds ``s`` in the leaf's coordinates (size 1 on output axes).
      The layer's input must be divided by ``s`` (fold ``1 / s`` into the
      preceding norm or layer), i.e. the effective weight is
      ``dequantize(tree) / scales``.

    Raises:
      ValueError: as [jaxrm.quant.gptq][], or ``grid < 1``.
    """
    if not isinstance(stats, Stats):
        raise TypeError(f"stats must be a jaxrm.calib.Stats, got {type(stats).__name__}")
    _check(bits, group_size, 128, 0.0)
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    g = Grid(bits, symmetric, group_size)
    trees, scales = {}, {}
    for path, leaf, ls in stats.pick(params, where):
        ls.group_dims(group_size)
        w3 = ls.matrix(np.asarray(leaf, np.float64))
        act = ls.mean_abs()
        best_s, res = [], []
        for i in range(ls.n_slices):
            a = np.maximum(act[i], 1e-8)
            cands = []
            for alpha in np.arange(grid) / grid:
                s = a**alpha
                s = np.maximum(s / np.sqrt(s.max() * s.min()), 1e-4)
                cands.append((_rtn_error(w3[i], ls.hessian[i], s, g, group_size or ls.d_in), s))
            s = min(cands, key=lambda c: c[0])[1]
            best_s.append(s)
            ws = (w3[i] * s[:, None]).astype(np.float32)
            res.append(
                quantize_slice(
                    ws.T,
                    ls.hessian[i],
                    g,
                    act_order=False,
                    damp=0.0,
                    block=128,
                    path=path,
                    index=i,
                    identity=True,
                )
            )
        trees[path] = build(leaf, ls, g, res)
        scales[path] = jnp.asarray(_to_leaf(ls, np.stack(best_s)), jnp.float32)
    tree = jtree.map_selected(lambda p, x: trees[p], params, lambda p, x: p in trees)
    out = jtree.map_selected(
        lambda p, x: scales[p], params, lambda p, x: p in scales, otherwise=lambda p, x: None
    )
    return tree, out


def smooth(
    params: Any, stats: Stats, *, alpha: float = 0.5, where: jtree.Where = None
) -> tuple[Any, Any]:
    """SmoothQuant's migration: ``s_j = max|x_j|^a / max_k |W_jk|^(1-a)`` per input feature.

    Returns the weights ``diag(s) W`` and the scales; dividing the layer's input
    by ``s`` leaves its output unchanged while moving activation outliers into
    the weights, so both quantize to 8 bits (w8a8) with less error.

    Args:
      params: the parameter pytree.
      stats: statistics of ``params`` from [jaxrm.calib.collect][] (``abs_max``).
      alpha: migration strength in ``[0, 1]``.
      where: leaves to smooth (default: every leaf with statistics).

    Returns:
      ``(params, scales)``: smoothed float weights and ``s`` in each leaf's
      coordinates (size 1 on output axes; ``None`` at other leaves).

    Raises:
      ValueError: ``alpha`` outside ``[0, 1]``, or as [jaxrm.calib.Stats.pick][].
    """
    if not isinstance(stats, Stats):
        raise TypeError(f"stats must be a jaxrm.calib.Stats, got {type(stats).__name__}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    new, scales = {}, {}
    for path, leaf, ls in stats.pick(params, where):
        w3 = ls.matrix(np.asarray(leaf, np.float64))
        wmax = np.maximum(np.abs(w3).max(axis=2), 1e-8)
        xmax = np.maximum(ls.abs_max, 1e-8)
        s = xmax**alpha / wmax ** (1 - alpha)
        new[path] = jnp.asarray(ls.unmatrix(w3 * s[:, :, None]), jnp.dtype(leaf.dtype))
        scales[path] = jnp.asarray(_to_leaf(ls, s), jnp.float32)
    tree = jtree.map_selected(lambda p, x: new[p], params, lambda p, x: p in new)
    out = jtree.map_selected(
        lambda p, x: scales[p], params, lambda p, x: p in scales, otherwise=lambda p, x: None
    )
    return tree, out
