"""Optimizer state stored in blockwise 8-bit codes (Dettmers et al. 2022)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrm.memory._qmaps import CODERS, MAPS, dynamic_map, linear_map

__all__ = [  # the maps are re-exported from _qmaps, where they live
    "BlockQuantized",
    "QuantizedState",
    "dequantize_blocks",
    "dynamic_map",
    "linear_map",
    "quantize_blocks",
    "quantized_state",
]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["codes", "absmax", "unsigned"],
    meta_fields=["shape", "dtype", "block", "mapping"],
)
@dataclasses.dataclass(frozen=True)
class BlockQuantized:
    """One tensor as 8-bit codes with one float32 scale per block of ``block`` entries.

    A pytree: ``codes``, ``absmax`` and ``unsigned`` are children (orbax
    saves them, shardings apply to them), the rest is static.

    Attributes:
      codes: ``uint8`` indices into the quantization map, flattened (``size``,).
      absmax: ``float32`` absolute maximum of each block (``ceil(size / block)``,).
      unsigned: scalar ``bool``: the tensor had no negative entry, so it was
        coded with the unsigned map (twice the resolution).
      shape: the tensor's shape.
      dtype: the tensor's dtype (name).
      block: entries per block.
      mapping: ``"dynamic"`` or ``"linear"``.
    """

    codes: Any
    absmax: Any
    unsigned: Any
    shape: tuple[int, ...]
    dtype: str
    block: int
    mapping: str


# Both passes over a tensor read it through a 2-D view whose rows each lie inside one
# block: rows of gcd(size, block) entries where that is wide enough (a free reshape of the
# tensor, however its size falls against the block; per-block scales reach each row by a
# broadcast), else whole blocks with the last one zero-padded. A padded or sliced copy
# would be one more pass, and the index arithmetic of a pad over a reshaped N-D tensor is
# slower still; the view costs neither.
_MIN_WIDTH = 16


def _width(size: int, block: int) -> int:
    """Entries per row of the view of a ``size``-entry tensor."""
    w = math.gcd(size, block)
    return w if w >= min(block, _MIN_WIDTH) else block


def _rows(flat: jax.Array, block: int) -> jax.Array:
    """``flat`` as rows of ``_width`` entries, each inside one block (zero-padded at the end
    only when the rows are whole blocks)."""
    w = _width(flat.size, block)
    rows = -(-flat.size // w)
    pad = rows * w - flat.size
    return (jnp.pad(flat, (0, pad)) if pad else flat).reshape(rows, w)


def _per_row(per_block: jax.Array, rows: int, per: int) -> jax.Array:
    """Per-block values repeated for the ``per`` consecutive rows of each block."""
    if per == 1:
        return per_block
    return jnp.broadcast_to(per_block[:, None], (per_block.size, per)).reshape(-1)[:rows]


def _max_min(b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-row max and min of ``b`` in one variadic reduction (one pass over ``b``)."""
    return jax.lax.reduce(
        (b, b), (np.float32(-np.inf), np.float32(np.inf)),
        lambda x, y: (jnp.maximum(x[0], y[0]), jnp.minimum(x[1], y[1])), (1,),
    )


def _block_max_min(v: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Max and min of each block of the view ``v`` (rows first, then the few row results)."""
    hi, lo = _max_min(v)
    per = block // v.shape[1]
    if per == 1:
        return hi, lo
    blocks = -(-v.shape[0] // per)
    pad = blocks * per - v.shape[0]
    hi = jnp.pad(hi, (0, pad), constant_values=-np.inf).reshape(blocks, per)
    lo = jnp.pad(lo, (0, pad), constant_values=np.inf).reshape(blocks, per)
    return jnp.max(hi, axis=1), jnp.min(lo, axis=1)


@functools.partial(jax.jit, static_argnames=("block", "mapping"))
def _quantize(x: jax.Array, block: int, mapping: str) -> tuple[jax.Array, ...]:
    flat = x.reshape(-1).astype(jnp.float32)
    if flat.size == 0:
        return jnp.zeros(0, jnp.uint8), jnp.zeros(0, jnp.float32), jnp.asarray(True)
    v = _rows(flat, block)
    # One pass for the block ranges: the max and min of each block give its absolute
    # maximum and, over all blocks, the sign test (the zero padding changes neither).
    hi, lo = _block_max_min(v, block)
    absmax = jnp.maximum(hi, -lo)
    unsigned = jnp.min(lo) >= 0
    scale = 1.0 / jnp.where(absmax > 0, absmax, 1.0)
    # One elementwise pass for the codes, cut back to the tensor's length.
    scale = _per_row(scale, v.shape[0], block // v.shape[1])
    codes = CODERS[mapping][0](v * scale[:, None], unsigned)
    return codes.reshape(-1)[: flat.size], absmax, unsigned


def quantize_blocks(x: Any, *, block: int = 2048, mapping: str = "dynamic") -> BlockQuantized:
    """Quantizes a float tensor blockwise: codes of ``x / absmax(block)`` on a map.

    Args:
      x: a floating array.
      block: entries per block (the last block may be shorter).
      mapping: ``"dynamic"`` (Dettmers' dynamic tree) or ``"linear"``.

    Returns:
      A [jaxrm.memory.BlockQuantized][].
    """
    x = jnp.asarray(x)
    codes, absmax, unsigned = _quantize(x, block, mapping)
    return BlockQuantized(
        codes=codes,
        absmax=absmax,
        unsigned=unsigned,
        shape=tuple(x.shape),
        dtype=np.dtype(x.dtype).name,
        block=block,
        mapping=mapping,
    )


def dequantize_blocks(q: BlockQuantized) -> jax.Array:
    """The float tensor a [jaxrm.memory.BlockQuantized][] stands for."""
    return _dequantize(q)


@jax.jit
def _dequantize(q: BlockQuantized) -> jax.Array:
    if q.codes.size == 0:
        return jnp.zeros(q.shape, q.dtype)
    c = _rows(q.codes, q.block)
    absmax = _per_row(q.absmax, c.shape[0], q.block // c.shape[1])
    values = CODERS[q.mapping][1](c, q.unsigned) * absmax[:, None]
    return values.reshape(-1)[: q.codes.size].reshape(q.shape).astype(q.dtype)


def _is_q(x: Any) -> bool:
    return isinstance(x, BlockQuantized)


class QuantizedState(NamedTuple):
    """State of [jaxrm.memory.quantized_state][]: the inner state with big float
    leaves as [jaxrm.memory.BlockQuantized][]."""

    inner: Any


def _check_args(bits: Any, block: Any, min_size: Any, mapping: Any) -> None:
    for name, value in (("bits", bits), ("block", block), ("min_size", min_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if bits != 8:
        raise ValueError(f"bits={bits}: only 8-bit codes are implemented (one uint8 per entry)")
    if block < 1:
        raise ValueError(f"block must be a positive integer, got {block}")
    if min_size < 0:
        raise ValueError(f"min_size must be non-negative, got {min_size}")
    if not isinstance(mapping, str):
        raise TypeError(f"mapping must be a string, got {type(mapping).__name__}")
    if mapping not in MAPS:
        raise ValueError(f"mapping={mapping!r} is not one of {sorted(MAPS)}")


def quantized_state(
    inner: optax.GradientTransformation,
    *,
    bits: int = 8,
    block: int = 2048,
    min_size: int = 4096,
    mapping: str = "dynamic",
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optax optimizer so its state is stored in blockwise 8-bit codes.

    Every floating leaf of ``inner``'s state with at least ``min_size`` entries
    (Adam's moments, momentum buffers) is kept as a
    [jaxrm.memory.BlockQuantized][]: one ``uint8`` code per entry and one
    float32 absolute maximum per ``block`` entries, about 1.002 bytes per
    entry instead of 4. Each update dequantizes the state, runs ``inner``,
    and quantizes the new state again, all inside the jitted step (Dettmers et
    al. 2022, "8-bit Optimizers via Block-wise Quantization"). Smaller leaves
    (biases, norm scales, counters) stay in float, where the codes would save
    little and cost precision. A leaf with no negative entry (a second moment)
    is coded on the unsigned map, which has twice the resolution, and none of
    its positive entries is rounded to 0 (Adam would divide a surviving first
    moment by ``eps`` there); they round up to the smallest code instead.

    Args:
      inner: the optimizer whose state to quantize, e.g. ``optax.adam(1e-3)``.
      bits: code width; only 8 is implemented.
      block: entries per block; smaller blocks track outliers more closely
        at ``4 / block`` bytes per entry of scales.
      min_size: leaves with fewer entries stay in float.
      mapping: ``"dynamic"`` (the dynamic tree map, relative precision over
        seven decades) or ``"linear"`` (evenly spaced codes).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      [jaxrm.memory.QuantizedState][].

    Raises:
      TypeError: ``inner`` is not an optax transformation, or a non-int
        ``bits``/``block``/``min_size``, or a non-string ``mapping``.
      ValueError: ``bits`` other than 8, a non-positive ``block``, a negative
        ``min_size`` or an unknown ``mapping``.
    """
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(
            f"inner must be an optax.GradientTransformation, got {type(inner).__name__}"
        )
    _check_args(bits, block, min_size, mapping)
    inner = optax.with_extra_args_support(inner)

    def compress(state: Any) -> Any:
        def one(leaf):
            if (
                hasattr(leaf, "dtype")
                and jnp.issubdtype(leaf.dtype, jnp.floating)
                and np.size(leaf) >= max(min_size, 1)
            ):
                return quantize_blocks(leaf, block=block, mapping=mapping)
            return leaf

        return jax.tree.map(one, state)

    def expand(state: Any) -> Any:
        return jax.tree.map(lambda x: dequantize_blocks(x) if _is_q(x) else x, state,
                            is_leaf=_is_q)

    def init(params: Any) -> QuantizedState:
        return QuantizedState(compress(inner.init(params)))

    def update(updates: Any, state: QuantizedState, params: Any = None, **extra: Any):
        if not isinstance(state, QuantizedState):
            raise TypeError(
                f"state must be the QuantizedState of this optimizer's init, got "
                f"{type(state).__name__}"
            )
        new_updates, new_inner = inner.update(updates, expand(state.inner), params, **extra)
        return new_updates, QuantizedState(compress(new_inner))

    return optax.GradientTransformationExtraArgs(init, update)
