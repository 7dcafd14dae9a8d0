"""Structured sparsity patterns: N:M, whole channels, blocks.

A pattern is a small frozen value (hashable, so it can be a static argument
of ``jax.jit``). Every pattern-specific computation is dispatched here, in
`check`, `unit_scores`, `expand` and `nm_mask`, so the
mask code in ``_masks.py`` only sees "units" (elements, channels or blocks) to
rank.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

__all__ = ["NM", "Blocks", "Channels", "Pattern", "blocks", "channels", "nm"]


@dataclasses.dataclass(frozen=True)
class NM:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive entries.

    Attributes:
      n: entries kept per group.
      m: group length along ``axis``.
      axis: the axis the groups run along.
    """

    n: int
    m: int
    axis: int = -2


@dataclasses.dataclass(frozen=True)
class Channels:
    """Keep or drop whole slices along ``axis``, ranked by the L2 norm of their scores.

    Attributes:
      axis: the channel axis (``-1``: the output features of a Flax ``Dense``
        or ``Conv`` kernel, i.e. whole filters).
    """

    axis: int = -1


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Keep or drop whole blocks tiling the trailing dimensions, ranked by L2 norm.

    Attributes:
      shape: the block shape; it tiles the last ``len(shape)`` dimensions of
        a leaf (leading dimensions are not grouped).
    """

    shape: tuple[int, ...]


Pattern = NM | Channels | Blocks


def _positive_int(value, argument: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{argument} must be >= 1, got {value}")
    return value


def _axis(value, argument: str = "axis") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be an int, got {type(value).__name__}")
    return value


def nm(n: int, m: int, axis: int = -2) -> NM:
    """N:M sparsity: in every ``m`` consecutive entries along ``axis``, keep ``n``.

    The default ``axis=-2`` is the input-feature (reduction) axis of Flax
    ``Dense`` kernels ``(in, out)`` and ``Conv`` kernels ``(..., in, out)``,
    the layout sparse tensor cores expect for 2:4 sparsity.

    Args:
      n: entries kept per group, ``0 <= n <= m``.
      m: group length, ``>= 1``; the leaf's ``axis`` must be divisible by it.
      axis: the axis the groups run along.

    Returns:
      The pattern, to pass as ``pattern=`` to [`masks`][jaxrm.prune.masks] or
      [`sparsify`][jaxrm.prune.sparsify].

    Raises:
      TypeError: an argument is not an int.
      ValueError: ``m < 1``, ``n < 0`` or ``n > m``.
    """
    m = _positive_int(m, "m")
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 0 or n > m:
        raise ValueError(f"n must be in [0, m={m}], got n={n}")
    return NM(n, m, _axis(axis))


def channels(axis: int = -1) -> Channels:
    """Channel (filter) pruning: whole slices along ``axis`` are kept or dropped.

    A slice's score is the L2 norm of its scores (for magnitude scores, the
    L2 norm of the filter). The sparsity counts channels: ``round((1 - s) * C)``
    channels are kept.

    Args:
      axis: the channel axis; ``-1`` is the output-feature axis of Flax kernels.

    Returns:
      The pattern.

    Raises:
      TypeError: ``axis`` is not an int.
    """
    return Channels(_axis(axis))


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
    for i, d in enumerate(shape):
        _positive_int(d, f"shape[{i}]")
    return Blocks(shape)


def check(pattern: Pattern | None, path: str, shape: tuple[int, ...]) -> None:
    """Raises ``ValueError`` (naming ``path``) when ``pattern`` does not fit ``shape``."""
    if pattern is None:
        return
    if isinstance(pattern, NM | Channels):
        if not -len(shape) <= pattern.axis < len(shape):
            raise ValueError(
                f"pattern axis {pattern.axis} is out of range for leaf {path!r} "
                f"of shape {shape}"
            )
        if isinstance(pattern, NM) and shape[pattern.axis] % pattern.m:
            raise ValueError(
                f"pattern {pattern.n}:{pattern.m} needs axis {pattern.axis} of leaf "
                f"{path!r} (shape {shape}) to be divisible by m={pattern.m}"
            )
    elif isinstance(pattern, Blocks):
        b = pattern.shape
        if len(b) > len(shape):
            raise ValueError(
                f"block shape {b} has more dimensions than leaf {path!r} of shape {shape}"
            )
        tail = shape[len(shape) - len(b) :]
        if any(d % e for d, e in zip(tail, b)):
            raise ValueError(
                f"block shape {b} does not tile the trailing dimensions {tail} of "
                f"leaf {path!r} (shape {shape})"
            )
    else:
        raise TypeError(
            "pattern must be None or one of jaxrm.prune.nm(...), channels(...), "
            f"blocks(...), got {type(pattern).__name__}"
        )


def unit_count(pattern: Pattern | None, shape: tuple[int, ...]) -> int:
    """The number of units (elements, channels or blocks) a leaf is ranked in."""
    if pattern is None or isinstance(pattern, NM):
        return math.prod(shape)
    if isinstance(pattern, Channels):
        return shape[pattern.axis]
    b = pattern.shape
    tail = shape[len(shape) - len(b) :]
    lead = shape[: len(shape) - len(b)]
    return math.prod(lead) * math.prod(d // e for d, e in zip(tail, b))


def unit_scores(pattern: Pattern | None, x: jax.Array) -> jax.Array:
    """The flat float32 score of each unit of leaf ``x`` (squared L2 norms for groups)."""
    x = x.astype(jnp.float32)
    if pattern is None:
        return x.reshape(-1)
    if isinstance(pattern, Channels):
        axis = pattern.axis % x.ndim
        others = tuple(a for a in range(x.ndim) if a != axis)
        # The squared norm ranks like the norm, without sqrt's rounding merging values.
        return jnp.sum(jnp.square(x), axis=others)
    if isinstance(pattern, Blocks):
        b = pattern.shape
        lead = x.shape[: x.ndim - len(b)]
        split = []
        for d, e in zip(x.shape[x.ndim - len(b) :], b):
            split += [d // e, e]
        y = jnp.square(x).reshape(*lead, *split)
        inner = tuple(len(lead) + 2 * i + 1 for i in range(len(b)))
        return jnp.sum(y, axis=inner).reshape(-1)
    raise TypeError(f"pattern {pattern!r} has no unit scores")


def expand(pattern: Pattern | None, keep: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Turns the flat keep-flags of the units back into an element mask of ``shape``."""
    if pattern is None:
        return keep.reshape(shape)
    if isinstance(pattern, Channels):
        axis = pattern.axis % len(shape)
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return jnp.broadcast_to(keep.reshape(view), shape)
    if isinstance(pattern, Blocks):
        b = pattern.shape
        lead = shape[: len(shape) - len(b)]
        grid = [d // e for d, e in zip(shape[len(shape) - len(b) :], b)]
        k = keep.reshape(*lead, *grid)
        split_view, split_full = [], []
        for g, e in zip(grid, b):
            split_view += [g, 1]
            split_full += [g, e]
        k = jnp.broadcast_to(k.reshape(*lead, *split_view), (*lead, *split_full))
        return k.reshape(shape)
    raise TypeError(f"pattern {pattern!r} cannot expand unit flags")


def nm_mask(pattern: NM, x: jax.Array) -> jax.Array:
    """The N:M mask of leaf ``x``: ``n`` highest scores kept in each group of ``m``.

    Ties break towards the lower index within the group.
    """
    axis = pattern.axis % x.ndim
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
