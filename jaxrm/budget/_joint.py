"""SparseGPT with joint quantization (the paper's 50% + 4-bit), built from prune and quant."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxrm import tree as jtree
from jaxrm.calib import Stats
from jaxrm.calib._solver import Grid
from jaxrm.prune._oneshot import solve_leaves
from jaxrm.quant._gptq import build

__all__ = ["sparsegpt_quant"]


def sparsegpt_quant(
    params: Any,
    stats: Stats,
    sparsity: Any,
    bits: int,
    *,
    block: int = 128,
    damp: float = 0.01,
    symmetric: bool = False,
    where: jtree.Where = None,
) -> tuple[Any, Any]:
    """Prunes and quantizes in one SparseGPT pass (Frantar & Alistarh 2023, Sec. 3.5).

    Each column's kept entries are rounded to a per-channel grid (min/max of
    the dense weights, as the paper's code) and its pruning plus rounding error
    is compensated over the columns not yet visited.

    Args:
      params: the parameter pytree.
      stats: statistics of ``params`` from [jaxrm.calib.collect][].
      sparsity: a float in ``[0, 1)`` or a pattern [jaxrm.prune.nm][] (see
        [jaxrm.prune.sparsegpt][]).
      bits: bits of the grid, 2 to 8.
      block: columns per block.
      damp: relative damping of ``H``.
      symmetric: symmetric grid instead of the asymmetric one.
      where: leaves to compress (default: every leaf with statistics).

    Returns:
      ``(tree, masks)``: ``tree`` holds [jaxrm.quant.QArray][] leaves whose
      pruned entries decode to exactly 0; ``masks`` marks the kept entries
      (pass both to [jaxrm.coding.encode][] so pruned entries cost no values).

    Raises:
      ValueError: as [jaxrm.prune.sparsegpt][] and [jaxrm.quant.gptq][].
    """
    if not isinstance(stats, Stats):
        raise TypeError(f"stats must be a jaxrm.calib.Stats, got {type(stats).__name__}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
    grid = Grid(bits, symmetric, None)
    leaves, keeps = {}, {}
    for path, leaf, ls, res in solve_leaves(
        params, stats, sparsity, block=block, damp=damp, where=where, grid=grid
    ):
        leaves[path] = build(leaf, ls, grid, [(r[0], r[1][:, :1], r[2][:, :1]) for r in res])
        keeps[path] = jnp.asarray(ls.unmatrix(np.stack([r[3].T for r in res])))
    tree = jtree.map_selected(lambda p, x: leaves[p], params, lambda p, x: p in leaves)
    masks = jtree.map_selected(
        lambda p, x: keeps[p], params, lambda p, x: p in keeps, otherwise=lambda p, x: None
    )
    return tree, masks
