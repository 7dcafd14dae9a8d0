"""Sparsity distributions: how a global sparsity is split among the leaves.

Each returns a pytree of the parameters' structure with a Python float at
each selected leaf and ``None`` elsewhere, to pass as ``sparsity=`` to
[jaxrm.prune.masks][].
"""

from __future__ import annotations

import math
from typing import Any

from jaxrm import _checks
from jaxrm import tree as jtree
from jaxrm.prune import _leaves

__all__ = ["erk", "uniform"]


def uniform(params: Any, sparsity: float, *, where: jtree.Where = None) -> Any:
    """The same sparsity for every selected leaf (and every slice of a stacked one).

    Args:
      params: any parameter pytree (only shapes and dtypes are read).
      sparsity: a float in ``[0, 1)``.
      where: the leaves to prune (default [jaxrm.tree.weights][]).

    Returns:
      A pytree of the params' structure: ``sparsity`` at selected leaves,
      ``None`` elsewhere.

    Raises:
      ValueError: ``sparsity`` outside ``[0, 1)`` or ``where`` selects nothing.
      TypeError: ``sparsity`` is not a number or a selected leaf is not floating.
    """
    s = float(_leaves.check_sparsity(sparsity))
    p = _leaves.plan(params, where)
    return p.tree([s] * len(p.picked))


def _fan_dims(lay: jtree.Layout) -> tuple[int, ...]:
    """The dimensions ERK scores: fan-in, fan-out and spatial axes, or the slice shape."""
    if not (lay.out and lay.contract):
        return lay.slice_shape
    grouped = set(lay.stacked) | set(lay.out) | set(lay.contract)
    spatial = tuple(d for a, d in enumerate(lay.shape) if a not in grouped)
    return (math.prod(lay.shape[a] for a in lay.contract),
            math.prod(lay.shape[a] for a in lay.out), *spatial)


def erk(
    params: Any,
    sparsity: float,
    *,
    where: jtree.Where = None,
    power: float = 1.0,
    stacked: Any = None,
) -> Any:
    """Erdos-Renyi-Kernel sparsities (Evci et al. 2020, RigL).

    A leaf of shape ``(d_1, ..., d_r)`` gets density ``eps * (sum d_i / prod d_i) ** power``,
    with ``eps`` chosen so that the selected leaves together keep
    ``(1 - sparsity)`` of their entries. A leaf whose density would exceed 1
    is made dense (sparsity 0) and ``eps`` is solved again for the others,
    as in the reference implementation. Each slice of a stacked leaf is a
    layer of its own shape (so a scanned ``(L, d_in, d_out)`` kernel gets the
    density of a ``(d_in, d_out)`` layer, not that of a 3-D tensor). Where the
    leaf's layout names both its input and its output axes, the ``d_i`` are
    the layer's fan-in (the product of the contracted axes), its fan-out (the
    product of the output axes) and any other (spatial) axes, so an attention
    kernel ``(emb, heads, head_dim)`` gets the density of the
    ``(emb, heads * head_dim)`` matrix it is, whichever way it is stored
    (reading its axes as a convolution's would make it almost uniform).

    Args:
      params: any parameter pytree (only shapes and dtypes are read).
      sparsity: the overall sparsity of the selected leaves, in ``[0, 1)``.
      where: the leaves to prune (default [jaxrm.tree.weights][]).
      power: the ERK power scale (1: ERK; 0: uniform), a finite float ``>= 0``.
      stacked: per-leaf stacked axes (see [jaxrm.tree.layouts][]).

    Returns:
      A pytree of the params' structure: a float sparsity at each selected
      leaf, ``None`` elsewhere.

    Raises:
      ValueError: ``sparsity`` outside ``[0, 1)``, a negative, NaN or infinite
        ``power``, or ``where`` selects nothing.
      TypeError: ``sparsity`` or ``power`` is not a number, or a selected leaf
        is not floating.
    """
    s = float(_leaves.check_sparsity(sparsity))
    power = _checks.real(power, "power", minimum=0)
    p = _leaves.plan(params, where, stacked=stacked)
    shapes = [_fan_dims(lay) for lay in p.layouts]
    sizes = [math.prod(lay.shape) for lay in p.layouts]
    # (sum d / prod d) ** power, divided by the largest of them (in log space, so a large
    # power cannot overflow; eps absorbs the common factor).
    logs = [power * (math.log(sum(sh)) - math.log(math.prod(sh))) if math.prod(sh) and sum(sh)
            else None
            for sh in shapes]
    top_log = max((v for v in logs if v is not None), default=0.0)
    raw = [0.0 if v is None else math.exp(v - top_log) for v in logs]
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
    return p.tree(values)
