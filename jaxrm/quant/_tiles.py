"""Weight-only matmuls and convolutions dequantized tile by tile.

Dequantizing a whole weight before its op holds a float copy of it; XLA's CPU
scheduler moreover dequantizes every weight of a model up front (the
dequantizations depend on the arguments alone) and holds all float copies at
once. Here a large weight is cut along one of its output axes into tiles of
at most ``tile_bytes`` float bytes; a ``fori_loop`` dequantizes one tile,
runs the op on it and writes its slice of the output in place, so one tile is
in float at a time and the dequantization cannot be hoisted out of the loop
(it reads the loop index). Each output entry is the same contraction as
untiled, over the same inputs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrm.quant._types import Codebook, QArray


def _keepdims(a: jax.Array, ndim: int) -> jax.Array:
    return jnp.reshape(a, (1,) * (ndim - a.ndim) + tuple(a.shape))


def _slice(a: jax.Array, axis: int, start, size: int, n: int) -> jax.Array:
    """Slices ``a`` along ``axis`` where it has the full size ``n`` (size 1: kept)."""
    if a.shape[axis] != n or n == 1:
        return a
    return lax.dynamic_slice_in_dim(a, start, size, axis=axis)


def slice_leaf(leaf: Any, axis: int, start, size: int) -> Any:
    """Entries ``start:start + size`` of a quantized leaf along one axis (not
    its group axis), with their scales, zero points, centroids and mask."""
    nd = len(leaf.shape)
    n = leaf.shape[axis]
    mask = None if leaf.mask is None else _slice(leaf.mask, axis, start, size, n)
    if isinstance(leaf, Codebook):
        c = leaf.centroids
        if c.ndim > 1:
            c = _slice(c, axis, start, size, n)
        return leaf.replace(
            indices=_slice(leaf.indices, axis, start, size, n), centroids=c, mask=mask
        )
    if leaf.packed and axis == nd - 1:
        values = lax.dynamic_slice_in_dim(leaf.values, start // 2, size // 2, axis=axis)
    else:
        values = _slice(leaf.values, axis, start, size, n)
    return leaf.replace(
        values=values,
        scale=_slice(_keepdims(leaf.scale, nd), axis, start, size, n),
        zero_point=_slice(_keepdims(leaf.zero_point, nd), axis, start, size, n),
        mask=mask,
    )


def tile_size(leaf: Any, axis: int, tile_bytes: int | None) -> int | None:
    """The tile length along ``axis`` keeping a float tile within ``tile_bytes``
    (the largest divisor of the axis that fits; even for a packed last axis),
    or ``None`` when the whole float weight fits."""
    if tile_bytes is None:
        return None
    shape = tuple(leaf.shape)
    n = shape[axis]
    per = int(np.prod(shape)) // max(n, 1) * jnp.dtype(leaf.dtype).itemsize
    if per * n <= tile_bytes or n < 2:
        return None
    even = isinstance(leaf, QArray) and leaf.packed and axis == len(shape) - 1
    fits = [d for d in range(1, n) if n % d == 0 and d * per <= tile_bytes and not (even and d % 2)]
    return max(fits) if fits else (2 if even else 1)


def tiled(leaf: Any, axis: int, size: int, x: jax.Array, out_axis: int, op) -> jax.Array:
    """``op(tile)`` for each tile of ``leaf`` along ``axis``, written in place
    into the output along ``out_axis``.

    Every tile is dequantized inside the loop. The loop's initial buffer (fully
    overwritten by the tiles) is a broadcast of ``0 * x[0]``: made from the op's
    input, it is not allocated at the program's start for every op at once."""
    out = jax.eval_shape(op, slice_leaf(leaf, axis, 0, size))
    shape = list(out.shape)
    shape[out_axis] = leaf.shape[axis]
    seed = jnp.zeros((), out.dtype)
    if x.size and jnp.issubdtype(x.dtype, jnp.inexact):
        seed = (jnp.reshape(x, (-1,))[0] * 0).astype(out.dtype)

    def body(i, y):
        start = i * size
        part = op(slice_leaf(leaf, axis, start, size))
        return lax.dynamic_update_slice_in_dim(y, part.astype(y.dtype), start, axis=out_axis)

    return lax.fori_loop(0, leaf.shape[axis] // size, body, jnp.broadcast_to(seed, shape))


def _largest(leaf: Any, axes: list[int]) -> int | None:
    if not axes:
        return None
    return max(axes, key=lambda a: (leaf.shape[a], a))


def dot(x: jax.Array, leaf: Any, side: str, params: dict, tile_bytes: int | None) -> jax.Array:
    """Weight-only ``dot_general`` of ``x`` and ``leaf``, tiled over the weight's
    largest free axis when its float copy exceeds ``tile_bytes``."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    wc, wb, xc, xb = (rc, rb, lc, lb) if side == "rhs" else (lc, lb, rc, rb)
    nd = len(leaf.shape)
    free = [a for a in range(nd) if a not in wc and a not in wb]

    def op(w):
        weight = w.dequantize()
        ops = (x, weight) if side == "rhs" else (weight, x)
        return lax.dot_general_p.bind(*ops, **params)

    axis = _largest(leaf, free)
    size = None if axis is None else tile_size(leaf, axis, tile_bytes)
    if size is None:
        return op(leaf)
    n_x_free = x.ndim - len(xc) - len(xb)
    out_axis = len(wb) + free.index(axis) + (n_x_free if side == "rhs" else 0)
    return tiled(leaf, axis, size, x, out_axis, op)


def conv(x: jax.Array, leaf: Any, params: dict, tile_bytes: int | None) -> jax.Array:
    """Weight-only ``conv_general_dilated``, tiled over output features when the
    float kernel exceeds ``tile_bytes`` (ungrouped convolutions)."""
    dn = params["dimension_numbers"]

    def op(w):
        return lax.conv_general_dilated_p.bind(x, w.dequantize(), **params)

    grouped = params.get("feature_group_count", 1) != 1 or params.get("batch_group_count", 1) != 1
    axis = dn.rhs_spec[0]
    size = None if grouped else tile_size(leaf, axis, tile_bytes)
    if size is None:
        return op(leaf)
    return tiled(leaf, axis, size, x, dn.out_spec[1], op)
