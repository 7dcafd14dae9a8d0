"""Sparsity distributions: how a global sparsity is split among the leaves.

Each returns a pytree of the parameters' structure with a Python float at
each selected leaf and ``None`` elsewhere, to pass as ``sparsity=`` to
[`jaxrm.prune.masks`][jaxrm.prune.masks].
"""

from __future__ import annotations

import math
from typing import Any

import jax

from jaxrm import tree as jtree
from jaxrm.prune import _masks

__all__ = ["erk", "uniform"]


def _picked(params: Any, where) -> tuple[list, list[int]]:
    return _masks._selected_leaves(params, where, None)


def _tree(params: Any, flat: list, picked: list[int], values: list[float]) -> Any:
    leaves = [None] * len(flat)
    for i, v in zip(picked, values):
        leaves[i] = v
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)


def uniform(params: Any, sparsity: float, *, where: jtree.Where = None) -> Any:
    """The same sparsity for every selected leaf.

    Args:
      params: any parameter pytree (only shapes and dtypes are read).
      sparsity: a float in ``[0, 1)``.
      where: the leaves to prune (default [`jaxrm.tree.weights`][jaxrm.tree.weights]).

    Returns:
      A pytree of the params' structure: ``sparsity`` at selected leaves,
      ``None`` elsewhere.

    Raises:
      ValueError: ``sparsity`` outside ``[0, 1)`` or ``where`` selects nothing.
      TypeError: ``sparsity`` is not a number or a selected leaf is not floating.
    """
    s = _masks.check_sparsity(sparsity)
    flat, picked = _picked(params, where)
    return _tree(params, flat, picked, [float(s)] * len(picked))


def erk(
    params: Any, sparsity: float, *, where: jtree.Where = None, power: float = 1.0
) -> Any:
    """Erdos-Renyi-Kernel sparsities (Evci et al. 2020, RigL).

    A leaf of shape ``(d_1, ..., d_r)`` gets density ``eps * (sum d_i / prod d_i) ** power``,
    with ``eps`` chosen so that the selected leaves together keep
    ``(1 - sparsity)`` of their entries. A leaf whose density would exceed 1
    is made dense (sparsity 0) and ``eps`` is solved again for the others,
    as in the reference implementation.

    Args:
      params: any parameter pytree (only shapes and dtypes are read).
      sparsity: the overall sparsity of the selected leaves, in ``[0, 1)``.
      where: the leaves to prune (default [`jaxrm.tree.weights`][jaxrm.tree.weights]).
      power: the ERK power scale (1: ERK; 0: uniform).

    Returns:
      A pytree of the params' structure: a float sparsity at each selected
      leaf, ``None`` elsewhere.

    Raises:
      ValueError: ``sparsity`` outside ``[0, 1)``, a negative ``power``, or
        ``where`` selects nothing.
      TypeError: ``sparsity`` is not a number or a selected leaf is not floating.
    """
    s = float(_masks.check_sparsity(sparsity))
    if isinstance(power, bool) or not isinstance(power, int | float) or power < 0:
        raise ValueError(f"power must be a float >= 0, got {power!r}")
    flat, picked = _picked(params, where)
    shapes = [tuple(flat[i][1].shape) for i in picked]
    sizes = [math.prod(sh) for sh in shapes]
    raw = [(sum(sh) / math.prod(sh)) ** power if math.prod(sh) else 0.0 for sh in shapes]
    dense: set[int] = set()
    while True:
        budget, divisor = 0.0, 0.0
        for j, n in enumerate(sizes):
            if j in dense:
                budget -= n * s  # a dense leaf keeps its share of the zeros too
            else:
                budget += n * (1.0 - s)
                divisor += raw[j] * n
        free = [j for j in range(len(sizes)) if j not in dense]
        if not free or divisor == 0.0:
            eps = 0.0
            break
        eps = budget / divisor
        top = max(raw[j] for j in free)
        if top * eps <= 1.0:
            break
        dense.update(j for j in free if raw[j] == top)
    values = [
        0.0 if j in dense else min(max(1.0 - eps * raw[j], 0.0), math.nextafter(1.0, 0.0))
        for j in range(len(sizes))
    ]
    return _tree(params, flat, picked, values)
