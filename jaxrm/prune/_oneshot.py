"""One-shot pruning from calibration statistics: Wanda and SparseGPT."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxrm import tree as jtree
from jaxrm.calib import LeafStats, Stats
from jaxrm.calib._solver import Plan, inverse_factor, solve
from jaxrm.calib._solver import params as grid_params
from jaxrm.prune._patterns import NM

__all__ = ["sparsegpt", "wanda"]


def _target(setting: Any, path: str, leaf: Any, argument: str):
    """Resolves a scalar, ``NM`` or callable ``(path, leaf) -> value`` setting for one leaf."""
    value = setting(path, leaf) if callable(setting) and not isinstance(setting, NM) else setting
    if isinstance(value, NM):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(
            f"{argument} at leaf {path!r} must be a float in [0, 1) or prune.nm(n, m), "
            f"got {value!r}"
        )
    return float(value)


def _check_nm(ls: LeafStats, pattern: NM) -> None:
    if ls.d_in % pattern.m:
        raise ValueError(
            f"N:M pattern {pattern.n}:{pattern.m} at leaf {ls.path!r}: the {ls.d_in} input "
            f"features are not divisible by m={pattern.m}"
        )


def _masks_tree(params, keeps: dict[str, np.ndarray]) -> Any:
    return jtree.map_selected(
        lambda p, x: jnp.asarray(keeps[p]),
        params,
        lambda p, x: p in keeps,
        otherwise=lambda p, x: None,
    )


def wanda(params: Any, stats: Stats, sparsity: Any, *, where: jtree.Where = None) -> Any:
    """Wanda (Sun et al. 2024): prune by ``|W_ij| * ||X_j||_2`` within each output channel.

    Args:
      params: the parameter pytree.
      stats: statistics of ``params`` from [jaxrm.calib.collect][].
      sparsity: a float in ``[0, 1)`` (each output channel of each slice keeps
        exactly ``round((1 - s) * d_in)`` inputs), a pattern
        [jaxrm.prune.nm][] (``n`` kept of every ``m`` consecutive input
        features, whatever the pattern's ``axis``), or a callable
        ``(path, leaf) -> either``.
      where: leaves to prune (default: every leaf with statistics).

    Returns:
      Masks: ``bool`` arrays (``True`` = kept) at pruned leaves, ``None``
      elsewhere; apply them with [jaxrm.prune.apply][]. Ties keep the lower index.

    Raises:
      ValueError: a bad sparsity, an N:M group that does not divide the input
        features, statistics from another model or a leaf without statistics.
    """
    if not isinstance(stats, Stats):
        raise TypeError(f"stats must be a jaxrm.calib.Stats, got {type(stats).__name__}")
    keeps = {}
    for path, leaf, ls in stats.pick(params, where):
        target = _target(sparsity, path, leaf, "sparsity")
        w = np.abs(np.asarray(ls.matrix(np.asarray(leaf, np.float32)), np.float64))
        score = w * ls.norms()[:, :, None]  # (slices, d_in, d_out)
        score = np.swapaxes(score, 1, 2)  # rows are output channels
        if isinstance(target, NM):
            _check_nm(ls, target)
            s = score.reshape(*score.shape[:2], -1, target.m)
            rank = np.argsort(np.argsort(-s, axis=-1, kind="stable"), axis=-1, kind="stable")
            keep = (rank < target.n).reshape(score.shape)
        else:
            k = round((1 - target) * ls.d_in)
            rank = np.argsort(np.argsort(-score, axis=-1, kind="stable"), axis=-1, kind="stable")
            keep = rank < k
        keeps[path] = ls.unmatrix(np.swapaxes(keep, 1, 2))
    return _masks_tree(params, keeps)


def _block(block: int, ls: LeafStats, target) -> int:
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    b = min(block, ls.d_in)
    if isinstance(target, NM) and b % target.m:
        raise ValueError(f"block={block} at leaf {ls.path!r} must be a multiple of m={target.m}")
    return b


def prune_slice(w, h, target, *, damp, block, path, index, grid=None, init=None):
    """SparseGPT on one ``(d_out, d_in)`` matrix; returns the solver's outputs (numpy).

    With a ``grid``, kept entries are quantized in the same pass (the paper's
    joint 50% + 4-bit mode), on per-channel parameters of the dense weights.
    """
    w = np.array(w, np.float32, copy=True)
    rows, cols = w.shape
    w[:, np.diagonal(h) <= 0] = 0.0
    if grid is not None and init is None:  # joint mode: per-channel grid of the dense weights
        s, z = grid_params(jnp.asarray(w), grid)
        init = (s[:, None], z[:, None])
    u, _ = inverse_factor(h, damp, path=path, slice_index=index)
    if isinstance(target, NM):
        plan = Plan(grid, ("nm", target.n, target.m), block)
        counts = None
    else:
        plan = Plan(grid, ("unstructured",), block)
        total = rows * cols
        pruned = total - round((1 - target) * total)
        n_blocks = -(-cols // block)
        ends = [min((k + 1) * block, cols) for k in range(n_blocks)]
        cum = [0] + [round(pruned * e / cols) for e in ends]
        counts = np.diff(cum).astype(np.int32)
    out = solve(w, u, plan, prune_counts=counts, init=init)
    return tuple(np.asarray(a) for a in out)


def solve_leaves(params, stats: Stats, sparsity, *, block, damp, where, grid=None):
    """Yields ``(path, leaf, LeafStats, per-slice solver outputs)`` for each chosen leaf."""
    for path, leaf, ls in stats.pick(params, where):
        target = _target(sparsity, path, leaf, "sparsity")
        if isinstance(target, NM):
            _check_nm(ls, target)
        b = _block(block, ls, target)
        w3 = ls.matrix(np.asarray(leaf, np.float32))
        res = [
            prune_slice(
                w3[i].T, ls.hessian[i], target, damp=damp, block=b, path=path, index=i, grid=grid
            )
            for i in range(ls.n_slices)
        ]
        yield path, leaf, ls, res


def sparsegpt(
    params: Any,
    stats: Stats,
    sparsity: Any,
    *,
    block: int = 128,
    damp: float = 0.01,
    where: jtree.Where = None,
) -> tuple[Any, Any]:
    """SparseGPT (Frantar & Alistarh 2023): prune and reconstruct with Hessian feedback.

    Columns (input features) are visited in order; in each block of ``block``
    columns the entries of smallest ``w^2 / [H^-1]_jj`` are pruned (N:M: in
    each group of ``m`` columns, per row), and the error of each pruned column
    is spread over the columns not yet visited through the Cholesky factor of
    ``H^-1``, so the kept weights change to reconstruct the layer's output.

    Args:
      params: the parameter pytree.
      stats: statistics of ``params`` from [jaxrm.calib.collect][].
      sparsity: a float in ``[0, 1)`` (each slice keeps exactly
        ``round((1 - s) * n)`` entries, spread over blocks in proportion), a
        pattern [jaxrm.prune.nm][] along the input features, or a callable
        ``(path, leaf) -> either``.
      block: columns per block (mask selection and lazy update).
      damp: ``H + damp * mean(diag H) * I`` before inversion.
      where: leaves to prune (default: every leaf with statistics).

    Returns:
      ``(params, masks)``: the reconstructed parameters (pruned entries exactly
      0, the others updated) and the masks (``True`` = kept, ``None`` at
      untouched leaves).

    Raises:
      ValueError: a bad sparsity or block, statistics from another model, a
        leaf without statistics, or a singular Hessian (naming the leaf).
    """
    if not isinstance(stats, Stats):
        raise TypeError(f"stats must be a jaxrm.calib.Stats, got {type(stats).__name__}")
    if not np.isfinite(damp) or damp < 0:
        raise ValueError(f"damp must be a finite float >= 0, got {damp!r}")
    keeps, weights = {}, {}
    for path, leaf, ls, res in solve_leaves(
        params, stats, sparsity, block=block, damp=damp, where=where
    ):
        keeps[path] = ls.unmatrix(np.stack([r[3].T for r in res]))
        w_hat = ls.unmatrix(np.stack([r[4].T for r in res]))
        weights[path] = jnp.asarray(np.where(keeps[path], w_hat, 0.0), jnp.dtype(leaf.dtype))
    new = jtree.map_selected(lambda p, x: weights[p], params, lambda p, x: p in weights)
    return new, _masks_tree(params, keeps)
