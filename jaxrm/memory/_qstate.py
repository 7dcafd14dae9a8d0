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

from jaxrm.memory._qmaps import CODERS as _CODERS
from jaxrm.memory._qmaps import MAPS as _MAPS
from jaxrm.memory._qmaps import dynamic_map, linear_map

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


# Both passes over a tensor read it in place. The block ranges come from rows of
# gcd(size, block) entries, a free reshape that never straddles a block however the size
# falls against the block (a second, tiny reduction joins the rows of each block); only
# where that gcd is narrow (an odd size) are the whole blocks and the short last one
# reduced apart, through slices. Per-block scales reach each entry by a broadcast of the
# (blocks, block) grid cut to the size, which fuses into the elementwise pass, so no
# padded or concatenated copy of the tensor is made.
_MIN_ROW = 16


def _block_range(flat: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """(absolute maximum of each block, whether ``flat`` has no negative entry).

    A NaN makes its block's maximum NaN and the tensor signed, as ``max(|x|)`` and
    ``min(x) >= 0`` do."""
    size = flat.size
    width = math.gcd(size, block)
    if width >= min(block, _MIN_ROW):
        hi = jnp.max(jnp.abs(flat.reshape(-1, width)), axis=1)
        per = block // width
        if per > 1:
            blocks = -(-size // block)
            pad = (0, blocks * per - hi.size)
            hi = jnp.pad(hi, pad).reshape(blocks, per).max(axis=1)
    else:
        whole = size // block * block
        parts = [flat[:whole].reshape(-1, block)] if whole else []
        parts += [flat[whole:].reshape(1, -1)] if whole < size else []
        hi = jnp.concatenate([jnp.max(jnp.abs(b), axis=1) for b in parts])
    # The whole tensor's minimum is read straight off the new moment, a reduction the
    # compiler cannot fuse into, so it writes the moment out once and every pass reads
    # it; with only fusible readers it recomputes the moment in each of them from the
    # decoded old one and keeps that decoded copy in float (its lookup is not duplicated).
    return hi, jnp.min(flat) >= 0


def _per_entry(per_block: jax.Array, size: int, block: int) -> jax.Array:
    """Each block's value repeated for its entries, cut to ``size`` (fuses, no copy)."""
    grid = jnp.broadcast_to(per_block[:, None], (per_block.size, block))
    return grid.reshape(-1)[:size]


@functools.partial(jax.jit, static_argnames=("block", "mapping"))
def _quantize(x: jax.Array, block: int, mapping: str) -> tuple[jax.Array, ...]:
    flat = x.reshape(-1).astype(jnp.float32)
    if flat.size == 0:
        return jnp.zeros(0, jnp.uint8), jnp.zeros(0, jnp.float32), jnp.asarray(True)
    absmax, unsigned = _block_range(flat, block)
    scale = 1.0 / jnp.where(absmax > 0, absmax, 1.0)
    codes = _CODERS[mapping][0](flat * _per_entry(scale, flat.size, block), unsigned)
    return codes, absmax, unsigned


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
    values = _CODERS[q.mapping][1](q.codes, q.unsigned)
    values = values * _per_entry(q.absmax, q.codes.size, q.block)
    return values.reshape(q.shape).astype(q.dtype)


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
    if mapping not in _MAPS:
        raise ValueError(f"mapping={mapping!r} is not one of {sorted(_MAPS)}")


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

    def coded(leaf: Any) -> bool:
        return (
            hasattr(leaf, "dtype")
            and jnp.issubdtype(leaf.dtype, jnp.floating)
            and np.size(leaf) >= max(min_size, 1)
        )

    def compress(state: Any) -> Any:
        def one(leaf):
            return quantize_blocks(leaf, block=block, mapping=mapping) if coded(leaf) else leaf

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
