"""Structured sparsity patterns: N:M, whole channels, blocks.

A pattern is a small frozen value (hashable, so it can be a static argument
of ``jax.jit``). Every pattern-specific computation is dispatched here. The
mask code only sees *units* (elements, channels or blocks) to rank, on a leaf
viewed as slices ``(n_slices, *slice_shape)`` (see [jaxrm.tree.Layout][]):
each stacked slice is ranked as its own layer.

An axis left ``None`` follows the leaf's layout: N:M groups run along the
(last) contracted axis, channels are the output axes. Given axes are in the
leaf's own coordinates and may not be stacked axes.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import _checks
from jaxrm.tree import Layout

__all__ = [
    "NM", "Blocks", "Channels", "Pattern", "blocks", "channels", "check_type", "expand",
    "in_slice", "nm", "nm_mask", "unit_count", "unit_scores",
]


@dataclasses.dataclass(frozen=True)
class NM:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive entries.

    Attributes:
      n: entries kept per group.
      m: group length along ``axis``.
      axis: the axis the groups run along (``None``: the leaf's contracted axis).
    """

    n: int
    m: int
    axis: int | None = None


@dataclasses.dataclass(frozen=True)
class Channels:
    """Keep or drop whole slices along ``axis``, ranked by the L2 norm of their scores.

    Attributes:
      axis: the channel axis or axes (``None``: the leaf's output axes, i.e.
        whole filters / output features in every framework's layout).
    """

    axis: int | tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Keep or drop whole blocks tiling the trailing dimensions, ranked by L2 norm.

    Attributes:
      shape: the block shape; it tiles the last ``len(shape)`` dimensions of
        each slice of a leaf (leading dimensions are not grouped).
    """

    shape: tuple[int, ...]


Pattern = NM | Channels | Blocks


def check_type(pattern, path: str | None = None) -> None:
    """Raises ``TypeError`` unless ``pattern`` is ``None`` or a pattern."""
    if pattern is not None and not isinstance(pattern, NM | Channels | Blocks):
        raise TypeError(
            f"pattern{_checks.at(path)} must be None or one of jaxrm.prune.nm(...), "
            f"channels(...), blocks(...), got {type(pattern).__name__}"
        )


def _axis_or_none(value, argument: str):
    return None if value is None else _checks.integer(value, argument)


def nm(n: int, m: int, axis: int | None = None) -> NM:
    """N:M sparsity: in every ``m`` consecutive entries along ``axis``, keep ``n``.

    The default follows each leaf's layout: the contracted (input) axis, as
    sparse tensor cores expect for 2:4 sparsity (Flax ``Dense`` ``(in, out)``:
    axis 0; Equinox ``Linear`` ``(out, in)``: axis 1; attention q/k/v
    ``(emb, heads, hd)``: ``emb``; HWIO conv: ``I``).

    Args:
      n: entries kept per group, ``0 <= n <= m``.
      m: group length, ``>= 1``; the leaf's ``axis`` must be divisible by it.
      axis: the axis the groups run along, or ``None`` for the layout's.

    Returns:
      The pattern, to pass as ``pattern=`` to [jaxrm.prune.masks][] or
      [jaxrm.prune.sparsify][].

    Raises:
      TypeError: an argument is not an int.
      ValueError: ``m < 1``, ``n < 0`` or ``n > m``.
    """
    m = _checks.positive_int(m, "m")
    n = _checks.integer(n, "n")
    if n < 0 or n > m:
        raise ValueError(f"n must be in [0, m={m}], got n={n}")
    return NM(n, m, _axis_or_none(axis, "axis"))


def channels(axis: int | tuple[int, ...] | None = None) -> Channels:
    """Channel (filter) pruning: whole slices along ``axis`` are kept or dropped.

    A channel's score is the L2 norm of its scores (for magnitude scores, the
    L2 norm of the filter). The sparsity counts channels: ``round((1 - s) * C)``
    channels are kept, per stacked slice.

    Args:
      axis: the channel axis or axes; ``None`` (default) uses each leaf's
        output axes (Flax kernels: the last; Equinox ``(out, in)``/OIHW: the first).

    Returns:
      The pattern.

    Raises:
      TypeError: ``axis`` is not an int or a tuple of ints.
    """
    if isinstance(axis, tuple | list):
        return Channels(tuple(_checks.integer(a, "axis") for a in axis))
    return Channels(_axis_or_none(axis, "axis"))


def blocks(shape: tuple[int, ...]) -> Blocks:
    """Block sparsity: blocks of ``shape`` tiling the trailing dimensions.

    A block's score is the L2 norm of its scores; the sparsity counts blocks.

    Args:
      shape: a tuple of positive ints, e.g. ``(4, 4)``; each trailing dimension
        of a selected leaf must be divisible by the matching block dimension.

    Returns:
      The pattern.

    Raises:
      TypeError: ``shape`` is not a sequence of ints.
      ValueError: ``shape`` is empty or has a dimension below 1.
    """
    if isinstance(shape, int) or not hasattr(shape, "__iter__"):
        raise TypeError(f"shape must be a tuple of ints, got {type(shape).__name__}")
    shape = tuple(shape)
    if not shape:
        raise ValueError("shape must have at least one dimension")
    return Blocks(tuple(_checks.positive_int(d, f"shape[{i}]") for i, d in enumerate(shape)))


def _to_slice_axis(a: int, layout: Layout, path: str) -> int:
    ndim = len(layout.shape)
    if not -ndim <= a < ndim:
        raise ValueError(
            f"pattern axis {a} is out of range for leaf {path!r} of shape {layout.shape}"
        )
    a %= ndim
    if a in layout.stacked:
        raise ValueError(
            f"pattern axis {a} of leaf {path!r} is a stacked axis {layout.stacked}; "
            "patterns act within each slice"
        )
    return a - sum(s < a for s in layout.stacked)


def in_slice(pattern: Pattern | None, layout: Layout, path: str) -> Pattern | None:
    """``pattern`` with its axes in one slice's coordinates, checked against the slice.

    Raises:
      ValueError: naming ``path``, an axis out of range or stacked, a
        dimension N:M's ``m`` or the block shape does not divide, or a layout
        with no axis to default to.
    """
    check_type(pattern, path)
    sl = layout.slice()
    shape = sl.shape
    if isinstance(pattern, NM):
        if pattern.axis is not None:
            axis = _to_slice_axis(pattern.axis, layout, path)
        elif sl.contract:
            axis = sl.contract[-1]
        elif len(shape) >= 2:
            axis = len(shape) - 2
        else:
            raise ValueError(f"nm needs an axis for leaf {path!r} of shape {layout.shape}")
        if shape[axis] % pattern.m:
            raise ValueError(
                f"pattern {pattern.n}:{pattern.m} needs axis {axis} of each slice of leaf "
                f"{path!r} (slice shape {shape}) to be divisible by m={pattern.m}"
            )
        return NM(pattern.n, pattern.m, axis)
    if isinstance(pattern, Channels):
        given = pattern.axis
        if given is None:
            axes = sl.out or (len(shape) - 1,)
        else:
            given = given if isinstance(given, tuple) else (given,)
            axes = tuple(_to_slice_axis(a, layout, path) for a in given)
        if len(set(axes)) != len(axes) or not shape:
            raise ValueError(f"channels axes {axes} do not fit leaf {path!r} ({layout.shape})")
        return Channels(tuple(sorted(axes)))
    if isinstance(pattern, Blocks):
        b = pattern.shape
        if len(b) > len(shape):
            raise ValueError(
                f"block shape {b} has more dimensions than each slice of leaf {path!r} "
                f"(slice shape {shape})"
            )
        tail = shape[len(shape) - len(b):]
        if any(d % e for d, e in zip(tail, b)):
            raise ValueError(
                f"block shape {b} does not tile the trailing dimensions {tail} of leaf "
                f"{path!r} (slice shape {shape})"
            )
    return pattern


def _slice_axes(pattern: Channels) -> tuple[int, ...]:
    """The channel axes of a pattern already in slice coordinates (see ``in_slice``)."""
    if not isinstance(pattern.axis, tuple):
        raise TypeError("channels need the pattern in slice coordinates (see in_slice)")
    return pattern.axis


def unit_count(pattern: Pattern | None, shape: tuple[int, ...]) -> int:
    """The number of units one slice of ``shape`` is ranked in (pattern in slice coordinates)."""
    if pattern is None or isinstance(pattern, NM):
        return math.prod(shape)
    if isinstance(pattern, Channels):
        return math.prod(shape[a] for a in _slice_axes(pattern))
    b = pattern.shape
    lead = shape[: len(shape) - len(b)]
    return math.prod(lead) * math.prod(d // e for d, e in zip(shape[len(shape) - len(b):], b))


def unit_scores(pattern: Pattern | None, x: jax.Array) -> jax.Array:
    """``(S, units)`` scores of slices ``x`` ``(S, *slice)`` (squared L2 norms of groups)."""
    s = x.shape[0]
    if pattern is None:
        return x.reshape(s, -1)
    x = x.astype(jnp.float32)
    if isinstance(pattern, Channels):
        keep = tuple(a + 1 for a in _slice_axes(pattern))
        others = tuple(a for a in range(1, x.ndim) if a not in keep)
        # The squared norm ranks like the norm, without sqrt's rounding merging values.
        return jnp.sum(jnp.square(x), axis=others).reshape(s, -1)
    if isinstance(pattern, Blocks):
        b = pattern.shape
        lead = x.shape[: x.ndim - len(b)]
        split = []
        for d, e in zip(x.shape[x.ndim - len(b):], b):
            split += [d // e, e]
        y = jnp.square(x).reshape(*lead, *split)
        inner = tuple(len(lead) + 2 * i + 1 for i in range(len(b)))
        return jnp.sum(y, axis=inner).reshape(s, -1)
    raise TypeError(f"pattern {pattern!r} has no unit scores")


def expand(pattern: Pattern | None, keep: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Turns ``(S, units)`` keep-flags into an element mask of slices ``shape`` ``(S, *slice)``."""
    if pattern is None:
        return keep.reshape(shape)
    if isinstance(pattern, Channels):
        axes = tuple(a + 1 for a in _slice_axes(pattern))
        view = [shape[0]] + [shape[a] if a in axes else 1 for a in range(1, len(shape))]
        return jnp.broadcast_to(keep.reshape(view), shape)
    if isinstance(pattern, Blocks):
        b = pattern.shape
        lead = shape[: len(shape) - len(b)]
        grid = [d // e for d, e in zip(shape[len(shape) - len(b):], b)]
        k = keep.reshape(*lead, *grid)
        split_view, split_full = [], []
        for g, e in zip(grid, b):
            split_view += [g, 1]
            split_full += [g, e]
        k = jnp.broadcast_to(k.reshape(*lead, *split_view), (*lead, *split_full))
        return k.reshape(shape)
    raise TypeError(f"pattern {pattern!r} cannot expand unit flags")


def nm_mask(pattern: NM, x: jax.Array) -> jax.Array:
    """The N:M mask of slices ``x`` ``(S, *slice)``: ``n`` highest kept in each group of ``m``.

    Ties break towards the lower index within the group. A numpy ``x`` is
    ranked in numpy (eager calls compile nothing), a jax one in jax.
    """
    if pattern.axis is None:
        raise TypeError("nm_mask needs the pattern in slice coordinates (see in_slice)")
    if isinstance(x, np.ndarray) and pattern.m <= 16:  # m (m - 1) / 2 comparisons
        return _nm_mask_host(pattern, x)
    axis = pattern.axis + 1
    m, n = pattern.m, pattern.n
    y = jnp.moveaxis(x.astype(jnp.float32), axis, -1)
    moved_shape = y.shape
    g = y.reshape(*moved_shape[:-1], moved_shape[-1] // m, m)
    g = jnp.where(jnp.isnan(g), -jnp.inf, g)
    a = g[..., :, None]  # entry i
    b = g[..., None, :]  # entry j
    idx = jnp.arange(m)
    earlier = idx[None, :] < idx[:, None]  # j before i
    # rank of i = entries beating it: higher score, or equal score and earlier.
    rank = jnp.sum((b > a) | ((b == a) & earlier), axis=-1)
    keep = (rank < n).reshape(moved_shape)
    return jnp.moveaxis(keep, -1, axis)


def _nm_mask_host(pattern: NM, x: np.ndarray) -> np.ndarray:
    """``nm_mask`` in numpy: one comparison per pair of group positions.

    The leaf is viewed as ``(before, groups, m, after)`` (no transpose). For
    positions ``j < i``, ``g_j >= g_i`` says ``j`` beats ``i`` (the earlier
    wins a tie) and its negation that ``i`` beats ``j`` (NaN counts as
    ``-inf``), so ``m (m - 1) / 2`` comparisons rank every entry.
    """
    assert pattern.axis is not None  # resolved from the leaf's layout by the caller
    axis = pattern.axis + 1
    m, n = pattern.m, pattern.n
    shape = x.shape
    before, after = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    g = x.astype(np.float32, copy=False).reshape(before, shape[axis] // m, m, after)
    cols = [np.where(np.isnan(g[:, :, i]), np.float32(-np.inf), g[:, :, i]) for i in range(m)]
    rank = [np.zeros(cols[0].shape, np.int8) for _ in range(m)]
    for i in range(m):
        for j in range(i):
            j_wins = cols[j] >= cols[i]
            rank[i] += j_wins
            rank[j] += ~j_wins
    keep = np.empty(g.shape, bool)
    for i in range(m):
        np.less(rank[i], n, out=keep[:, :, i])
    return keep.reshape(shape)
