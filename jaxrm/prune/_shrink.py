"""Removing group channels for real: the smaller tree, and the masks it is exact against.

``group_masks`` zeroes every member of a removed channel (kernel columns and
rows, biases, normalisation scales, shifts and running statistics): the
removed channel is then *silent*, its value at every kernel that reads it is
multiplied by a zeroed row, so nothing of it reaches the output. ``shrink``
deletes the same entries, so the smaller model computes the masked model's
outputs up to float round-off (fewer zero terms in each sum).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import tree as jtree
from jaxrm.prune._groups import Group

__all__ = ["Shrunk", "group_masks", "shrink"]


class Shrunk(NamedTuple):
    """The result of [`shrink`][jaxrm.prune.shrink].

    Attributes:
      params: the smaller tree, of the input's structure.
      sizes: ``module path -> new sizes`` for every module with a changed
        leaf: the sizes of its kernel's produced axes (``features`` of a
        Dense or Conv, ``(num_heads, head_dim)`` of a DenseGeneral query
        kernel, ``out_features`` of an Equinox Linear), or of the changed axes
        of its other leaves (a BatchNorm's channels). A module path is a leaf
        path without its last segment (``"params/Dense_0"``).
      shapes: ``leaf path -> new shape`` for every changed leaf.
    """

    params: Any
    sizes: dict[str, tuple[int, ...]]
    shapes: dict[str, tuple[int, ...]]


def _check(params: Any, groups: Sequence[Group], keep: Sequence[Any]) -> dict[str, Any]:
    if isinstance(groups, Group) or not all(isinstance(g, Group) for g in groups):
        raise TypeError("groups must be a list of prune.Group (from prune.groups)")
    if len(keep) != len(groups):
        raise ValueError(f"keep has {len(keep)} entries for {len(groups)} groups")
    leaves = dict(jtree.leaves_with_paths(params))
    for i, (g, k) in enumerate(zip(groups, keep)):
        shape = tuple(np.shape(k))
        if shape != (g.size,):
            raise ValueError(f"keep[{i}] has shape {shape}, expected ({g.size},) for {g!r}")
        if np.asarray(k).dtype != np.bool_:
            raise TypeError(f"keep[{i}] must be a bool array, got {np.asarray(k).dtype}")
        for (path, axis), index in zip(g.members, g.index):
            leaf = leaves.get(path)
            if leaf is None or not jtree.is_array(leaf):
                raise ValueError(f"groups[{i}] names leaf {path!r}, which params lacks")
            shape = tuple(leaf.shape)
            if axis >= len(shape) or index.max() >= shape[axis] or (
                g.layer is not None and g.layer >= shape[0]
            ):
                raise ValueError(
                    f"groups[{i}] does not fit leaf {path!r} of shape {shape} (axis "
                    f"{axis}); were the groups found on other parameters?"
                )
    return leaves


def _removals(groups, keep) -> dict[str, dict[int, dict[int | None, set[int]]]]:
    """``path -> axis -> layer (None: all) -> removed positions``."""
    out: dict[str, dict[int, dict[int | None, set[int]]]] = {}
    for g, k in zip(groups, keep):
        drop = ~np.asarray(k, bool)
        if not drop.any():
            continue
        for (path, axis), index in zip(g.members, g.index):
            by_layer = out.setdefault(path, {}).setdefault(axis, {})
            by_layer.setdefault(g.layer, set()).update(index[drop].ravel().tolist())
    return out


def group_masks(params: Any, groups: Sequence[Group], keep: Sequence[Any]) -> Any:
    """The mask tree that silences the removed channels of every group.

    ``prune.apply(params, group_masks(params, groups, keep))`` is the masked
    model that [`shrink`][jaxrm.prune.shrink] reproduces exactly.

    Args:
      params: the tree the groups were found on.
      groups: from [`groups`][jaxrm.prune.groups].
      keep: one ``bool`` array of shape ``(group.size,)`` per group, ``True``
        = kept (e.g. from [`group_keep`][jaxrm.prune.group_keep]).

    Returns:
      A mask pytree of ``params``' structure: ``bool`` arrays at the leaves a
      removed channel touches, ``None`` elsewhere.

    Raises:
      ValueError: ``keep`` does not match ``groups``, or a group does not fit
        ``params`` (names the leaf).
      TypeError: a ``keep`` entry is not boolean.
    """
    leaves = _check(params, groups, keep)
    masks = {}
    for path, axes in _removals(groups, keep).items():
        m = np.ones(tuple(leaves[path].shape), bool)
        for axis, by_layer in axes.items():
            for layer, removed in by_layer.items():
                view = np.moveaxis(m if layer is None else m[layer], axis - (layer is not None), 0)
                view[sorted(removed)] = False
        masks[path] = jnp.asarray(m)
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: masks.get(jtree.path_str(kp)), params
    )


def _kept(n: int, removed: set[int]) -> np.ndarray:
    return np.setdiff1d(np.arange(n), np.fromiter(removed, int, len(removed)))


def _shrink_leaf(path: str, x: Any, axes: dict[int, dict[int | None, set[int]]]) -> Any:
    # numpy gathers concrete leaves with no compilation; traced leaves stay in jnp.
    xp = jnp if isinstance(x, jax.core.Tracer) else np
    x = xp.asarray(x)
    for axis, by_layer in sorted(axes.items()):
        shared = by_layer.get(None, set())
        if set(by_layer) == {None}:
            x = xp.take(x, _kept(x.shape[axis], shared), axis=axis)
            continue
        kept = [_kept(x.shape[axis], shared | by_layer.get(layer, set()))
                for layer in range(x.shape[0])]
        counts = sorted({len(k) for k in kept})
        if len(counts) > 1:
            raise ValueError(
                f"the layers of stacked leaf {path!r} would keep different numbers of "
                f"channels on axis {axis} ({counts}); keep the same count in every "
                "layer (e.g. prune.group_keep with scope='uniform')"
            )
        x = xp.stack([xp.take(x[layer], k, axis=axis - 1) for layer, k in enumerate(kept)])
    return jnp.asarray(x)


def shrink(params: Any, groups: Sequence[Group], keep: Sequence[Any]) -> Shrunk:
    """Removes the channels that ``keep`` drops from every leaf they touch.

    The returned tree holds the kept entries only (kernels lose rows and
    columns, biases, normalisation parameters and ``batch_stats`` lose
    entries, fused and head axes lose whole heads), and the model built at
    the new sizes computes the same outputs as ``params`` masked by
    [`group_masks`][jaxrm.prune.group_masks] (up to float round-off). For Linen::

        small, sizes, _ = prune.shrink(variables, gs, keep)
        out = CNN(features=sizes["params/Conv_0"][0]).apply(small, x)

    Args:
      params: the tree the groups were found on (a Linen variables dict with
        ``params`` and ``batch_stats``, an ``nnx.State``, an Equinox module's
        arrays, ...).
      groups: from [`groups`][jaxrm.prune.groups].
      keep: one ``bool`` array of shape ``(group.size,)`` per group, ``True``
        = kept. A scanned leaf must keep the same count in every layer.

    Returns:
      A [`Shrunk`][jaxrm.prune.Shrunk] ``(params, sizes, shapes)``; ``params`` has the
      input's structure and is a new tree (the input is not modified).

    Raises:
      ValueError: ``keep`` does not match ``groups``, a group does not fit
        ``params``, or the layers of a stacked leaf keep different counts.
      TypeError: ``groups`` or ``keep`` entries have the wrong type.
    """
    _check(params, groups, keep)
    removals = _removals(groups, keep)
    shapes: dict[str, tuple[int, ...]] = {}

    def visit(kp, x):
        path = jtree.path_str(kp)
        if path not in removals:
            return x
        y = _shrink_leaf(path, x, removals[path])
        shapes[path] = tuple(y.shape)
        return y

    small = jax.tree_util.tree_map_with_path(visit, params)
    outputs = groups[0].outputs if groups else {}
    sizes: dict[str, tuple[int, ...]] = {}
    for path, shape in shapes.items():
        module = path.rsplit("/", 1)[0] if "/" in path else ""
        if path in outputs:
            sizes[module] = tuple(shape[a] for a in outputs[path])
        elif module not in sizes:
            sizes[module] = tuple(shape[a] for a in sorted(removals[path]))
    return Shrunk(small, sizes, shapes)
