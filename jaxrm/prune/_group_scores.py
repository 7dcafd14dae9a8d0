"""Scores per channel group, and which channels each group keeps.

A group's channel is scored over all its members together (DepGraph's
grouped importance): the L1 or L2 norm of each member's entries for that
channel, summed over the members; the magnitude of the normalisation scale
(Network Slimming, Liu et al. 2017); or the first-order Taylor estimate of
the loss change when the channel is removed, ``(sum of w * g)^2`` over its
entries (Molchanov et al. 2019).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import tree as jtree
from jaxrm.prune._groups import Group
from jaxrm.prune._shrink import _check

__all__ = ["group_keep", "group_scores"]

_METHODS = ("l1", "l2", "bn", "taylor")
_SCALE = re.compile(r"(^|/)(scale|weight|gamma)$")


def _per_channel(x, axis: int, fn):
    others = tuple(a for a in range(x.ndim) if a != axis)
    return fn(x.astype(np.float32), others)


def group_scores(
    params: Any,
    groups: Sequence[Group],
    *,
    method: str = "l2",
    grads: Any = None,
    where: jtree.Where = None,
) -> list[jax.Array]:
    """One float32 score per channel of each group (higher = more important).

    Args:
      params: the tree the groups were found on.
      groups: from [`groups`][jaxrm.prune.groups].
      method: ``"l2"`` (sum over members of the channel's L2 norm), ``"l1"``
        (sum of absolute values), ``"bn"`` (the absolute value of the
        normalisation scale in the group: a 1-D member named ``scale``,
        ``weight`` or ``gamma``; groups without one score ``+inf``, so they are
        never removed), or ``"taylor"`` (``(sum of w * g)^2`` over the
        channel's entries; needs ``grads``).
      grads: gradients of a loss with respect to ``params`` (``"taylor"``).
      where: the members that count for ``"l1"``, ``"l2"`` and ``"taylor"``:
        ``None`` (default) for the kernels, i.e. the members the program
        multiplies in a ``dot_general`` or convolution (not biases, norm
        parameters or statistics); or a regular expression on the leaf path
        or a callable ``(path, leaf) -> bool`` as for
        [jaxrm.tree.select][].

    Returns:
      A list with one array of shape ``(group.size,)`` per group.

    Raises:
      ValueError: an unknown ``method``, ``"taylor"`` without ``grads``,
        ``grads`` that do not match ``params``, ``"bn"`` on groups with no
        normalisation scale at all, or groups that do not fit ``params``.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    groups = list(groups)
    leaves = _check(params, groups, [np.ones(g.size, bool) for g in groups])
    if method == "taylor":
        if grads is None:
            raise ValueError("method='taylor' needs grads")
        g_leaves = dict(zip(leaves, jtree.aligned(params, grads, "grads")))
    chosen = None if where is None else dict(zip(
        (p for p, _ in jtree.leaves_with_paths(params)),
        jax.tree_util.tree_leaves(jtree.select(params, where)),
    ))
    # Concrete trees are scored with numpy (no compilation per leaf shape); traced
    # ones (inside jit) with jnp.
    traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((params, grads)))
    xp = jnp if traced else np
    cache: dict[tuple, Any] = {}
    out, any_scale = [], False
    for g in groups:
        total = xp.zeros(g.size, np.float32)
        found = False
        for (path, axis), index, role in zip(g.members, g.index, g.roles):
            x = leaves[path]
            if method == "bn":
                if not (x.ndim - (g.layer is not None) == 1 and _SCALE.search(path)):
                    continue
            elif not (role != "other" if chosen is None else chosen[path]):
                continue
            found = True
            key = (path, axis, g.layer)
            if key not in cache:
                grad = g_leaves.get(path) if method == "taylor" else None
                cache[key] = _member_values(xp, method, x, grad, axis, g.layer)
            summed = xp.sum(cache[key][index], axis=1)
            total = total + (xp.sqrt(summed) if method == "l2" else summed)
        if method == "taylor":
            total = xp.square(total)
        if method == "bn" and not found:
            total = xp.full(g.size, np.inf, np.float32)
        any_scale |= found
        out.append(jnp.asarray(total))
    if method == "bn" and groups and not any_scale:
        raise ValueError("method='bn' found no normalisation scale in any group")
    return out


def _member_values(xp, method, x, g, axis, layer):
    """Per position along ``axis``: the member's contribution before summing over ``index``."""
    x = xp.asarray(x)
    if layer is not None:
        x = x[layer]
        g = None if g is None else g[layer]
        axis -= 1
    if method == "l1":
        return _per_channel(x, axis, lambda v, a: xp.sum(xp.abs(v), a))
    if method == "l2":
        return _per_channel(x, axis, lambda v, a: xp.sum(xp.square(v), a))
    if method == "bn":
        return xp.abs(x.astype(np.float32))
    return _per_channel(x * xp.asarray(g), axis, lambda v, a: xp.sum(v, a))


def _fraction(value: Any, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{argument} must be a float in [0, 1), got {type(value).__name__}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{argument} must be in [0, 1), got {float(value)}")
    return float(value)


def group_keep(
    scores: Sequence[Any],
    sparsity: Any,
    *,
    scope: str = "uniform",
    min_keep: int = 1,
) -> list[jax.Array]:
    """Which channels each group keeps: its highest scores.

    With ``scope="uniform"`` every group keeps ``round((1 - s) * size)``
    channels; with ``scope="global"`` the ``round((1 - s) * total)`` highest
    scores over all groups are kept. The selection is [`masks`][jaxrm.prune.masks]
    (exact counts, ties to the lower index). Every group keeps at least
    ``min_keep`` channels (its best ones), so no layer is cut off.

    Args:
      scores: one score array per group, e.g. from [`group_scores`][jaxrm.prune.group_scores].
      sparsity: the fraction of channels removed, a float in ``[0, 1)``, or
        (uniform only) a list with one float per group.
      scope: ``"uniform"`` or ``"global"``.
      min_keep: the fewest channels any group keeps, ``>= 1``.

    Returns:
      One ``bool`` array of shape ``(size,)`` per group, ``True`` = kept.

    Raises:
      ValueError: a sparsity outside ``[0, 1)``, an unknown ``scope``, a
        per-group sparsity list with ``scope="global"`` or of the wrong
        length, or ``min_keep < 1``.
    """
    if scope not in ("uniform", "global"):
        raise ValueError(f"scope must be 'uniform' or 'global', got {scope!r}")
    if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 1:
        raise ValueError(f"min_keep must be an int >= 1, got {min_keep!r}")
    scores = [jnp.asarray(s, jnp.float32).reshape(-1) for s in scores]
    if not scores:
        return []
    if isinstance(sparsity, list | tuple):
        if scope == "global":
            raise ValueError("a per-group sparsity list needs scope='uniform'")
        if len(sparsity) != len(scores):
            raise ValueError(f"sparsity has {len(sparsity)} entries for {len(scores)} groups")
        per = [_fraction(s, f"sparsity[{i}]") for i, s in enumerate(sparsity)]
    else:
        per = [_fraction(sparsity, "sparsity")] * len(scores)
    from jaxrm.prune import masks  # the public selection (imported late: same package)

    everything = lambda path, leaf: True
    if scope == "global":
        kept = masks(scores, per[0], scope="global", where=everything)
    else:
        # Counts are fixed here, so a sparsity that rounds to keep 0 still keeps min_keep.
        counts = [max(min(min_keep, s.size), round((1 - p) * s.size)) for s, p in zip(scores, per)]
        per = [1.0 - c / s.size if c < s.size else 0.0 for c, s in zip(counts, scores)]
        kept = masks(scores, [_exact(p, s.size, c) for p, s, c in zip(per, scores, counts)],
                     where=everything)
    out = []
    for s, k in zip(scores, kept):
        need = min(min_keep, s.size) - int(jnp.sum(k))
        if need > 0:
            k = k | _top(s, k, need)
        out.append(k)
    return out


def _exact(p: float, n: int, count: int) -> float:
    """A sparsity that [`masks`][jaxrm.prune.masks] turns into exactly ``count`` of ``n`` kept."""
    for cand in (p, math.nextafter(p, 0.0), math.nextafter(p, 1.0)):
        if 0.0 <= cand < 1.0 and round((1.0 - cand) * n) == count:
            return cand
    return p


def _top(scores: jax.Array, kept: jax.Array, need: int) -> jax.Array:
    """Flags of the ``need`` best channels not yet kept."""
    order = np.argsort(-np.where(np.asarray(kept), -np.inf, np.asarray(scores)), kind="stable")
    out = np.zeros(scores.shape, bool)
    out[order[:need]] = True
    return jnp.asarray(out)
