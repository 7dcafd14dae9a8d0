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

__all__ = [
    "BlockQuantized",
    "QuantizedState",
    "dequantize_blocks",
    "dynamic_map",
    "linear_map",
    "quantize_blocks",
    "quantized_state",
]


@functools.cache
def dynamic_map(signed: bool) -> np.ndarray:
    """The 256-entry dynamic tree quantization map of Dettmers et al. (2022), sorted.

    Each code is a power of ten (its exponent given by the count of leading
    zero bits) times a linear fraction in (0.1, 1): decade ``10^(i-6)``, for
    ``i = 0..6``, holds ``2^i`` fractions per sign (``2^(i+1)`` unsigned), so
    precision is relative and spans seven orders of magnitude below the block's
    absolute maximum. Plus ``0`` and ``1``: signed, 127 negative codes, 0 and
    128 positive ones; unsigned, 0 and 255 positive ones.

    Args:
      signed: the signed map (first moments) or the unsigned one (second moments).

    Returns:
      A sorted float32 array of 256 values in ``[-1, 1]`` (``[0, 1]`` unsigned).
    """
    values = [0.0, 1.0]
    for i in range(7):
        items = 2**i if signed else 2 ** (i + 1)
        edges = np.linspace(0.1, 1.0, items + 1)
        means = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)
        values += means.tolist()
        if signed:
            values += (-means).tolist()
    return np.sort(np.asarray(values, np.float64)).astype(np.float32)


@functools.cache
def linear_map(signed: bool) -> np.ndarray:
    """256 evenly spaced codes in ``[-1, 1]`` (with an exact 0) or ``[0, 1]``."""
    if signed:
        return np.append(np.linspace(-1.0, 1.0, 255), 1.0).astype(np.float32)
    return np.linspace(0.0, 1.0, 256).astype(np.float32)


_MAPS = {"dynamic": dynamic_map, "linear": linear_map}


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


# Coding by table lookups. A gather from a table that stays in cache, its index promised
# in bounds, is one scalar load per entry on a CPU (the compiler does not vectorize it),
# and still cheaper than arithmetic: a search is eight dependent gathers, and a chain of
# per-decade selects, even without the corrections exactness needs, is slower.
#
# Encoding reads the nearest code off the bits of a = |x| / absmax in [0, 1]: the bits
# shifted right by _SHIFT (the exponent and top mantissa bits) name a cell of relative
# width 2^-8, narrower than any two neighbouring codes of either map are apart, so at
# most one midpoint between codes falls inside a cell. That midpoint shares the cell's
# high bits, so its low _SHIFT bits describe it exactly: per cell, one table holds the
# rank of the code nearest the cell's lower end and another those low bits (2^_SHIFT: no
# midpoint), and rank = rank table + (low bits of a >= low table) is exactly the nearest
# code, the argmin over the 256 codes of the numpy reference in the tests (a tie goes to
# the larger magnitude). Both live in one int32 table read once per entry, as
# (rank << 16) + (2^16 - low): adding the entry's low bits carries into the rank exactly
# when they reach the midpoint's, so rank = (table + low bits of a) >> 16 (a table entry
# read twice would be gathered into a buffer first; one gather, used once, fuses into the
# encoding loop). Cells below 2^-24 (far under the smallest code's midpoint with 0)
# share the first cell.

_SHIFT = 15
_LOW = (1 << _SHIFT) - 1
_FIRST = int(np.float32(2.0**-24).view(np.int32)) >> _SHIFT
_CELLS = (int(np.float32(1.0).view(np.int32)) >> _SHIFT) + 1 - _FIRST  # 2^-24 .. 1


def _magnitudes(signed: bool) -> np.ndarray:
    """The map's codes of one sign, from 0 upward (what encoding ranks |x| among)."""
    table = dynamic_map(signed)
    return table[table >= 0].astype(np.float32)


@functools.cache
def _encode_table() -> np.ndarray:
    """``(rank << 16) + 2^16 - low`` per cell (int32), signed cells then unsigned."""
    ranks, lows = _encode_tables()
    return ((ranks.astype(np.int64) << 16) + (1 << 16) - lows).astype(np.int32)


@functools.cache
def _encode_tables() -> tuple[np.ndarray, np.ndarray]:
    """(rank, low bits of the midpoint) per cell, signed cells then unsigned."""
    cells = np.arange(_FIRST, _FIRST + _CELLS, dtype=np.int64)
    lows = (cells << _SHIFT).astype(np.int32).view(np.float32)
    highs = ((cells + 1) << _SHIFT).astype(np.int32).view(np.float32)
    ranks, lows_out = [], []
    for signed in (True, False):
        mags = _magnitudes(signed).astype(np.float64)
        exact = (mags[:-1] + mags[1:]) / 2
        mids = exact.astype(np.float32)  # the least float32 >= each midpoint: a float32
        mids = np.where(mids < exact, np.nextafter(mids, np.float32(2)), mids)  # is >= it
        rank = np.searchsorted(mids, lows, side="right")  # midpoints <= the cell's start
        inside = np.searchsorted(mids, highs, side="left") - rank  # midpoints in the cell
        low = mids[np.minimum(rank, mids.size - 1)].view(np.int32) & _LOW
        low = np.where(inside == 1, low, _LOW + 1)
        if inside.max() > 1 or rank[0] != 0 or inside[0] != 0:  # properties of the maps
            raise AssertionError("the encoding cells do not fit the map")
        ranks.append(rank.astype(np.uint8))
        lows_out.append(low.astype(np.uint16))
    return np.concatenate(ranks), np.concatenate(lows_out)


@functools.cache
def _decode_table() -> np.ndarray:
    """Signed then unsigned code values: ``value = table[code + 256 * unsigned]``."""
    return np.concatenate([dynamic_map(True), dynamic_map(False)])


def _get(table: Any, index: jax.Array) -> jax.Array:
    return jnp.asarray(table).at[index].get(mode="promise_in_bounds")


def _dynamic_codes(v: jax.Array, unsigned: jax.Array) -> jax.Array:
    bits = jax.lax.bitcast_convert_type(jnp.abs(v), jnp.int32)  # ordered like |v| >= 0
    cell = jnp.clip((bits >> _SHIFT) - _FIRST, 0, _CELLS - 1)  # NaN and inf: the last
    cell = cell + unsigned.astype(jnp.int32) * _CELLS
    r = (_get(_encode_table(), cell) + (bits & _LOW)) >> 16
    # signed: 0 is code 127, positive codes 128..255 (1.0 is the last), negative ones
    # 126..0 (the map has no -1: the most negative code is the nearest to it).
    # unsigned: a positive entry never becomes 0: the unsigned map codes second moments,
    # and a moment rounded to 0 under a surviving first moment would divide by ~eps.
    signed = jnp.where(v < 0, 127 - jnp.minimum(r, 127), 127 + r)
    code = jnp.where(unsigned, jnp.maximum(r, (bits > 0).astype(jnp.int32)), signed)
    return code.astype(jnp.uint8)


def _dynamic_values(codes: jax.Array, unsigned: jax.Array) -> jax.Array:
    return _get(_decode_table(), codes.astype(jnp.int32) + 256 * unsigned.astype(jnp.int32))


_MAGIC = np.float32(1.5 * 2**23)  # 0 <= t < 2^22: t + _MAGIC has unit spacing


def _rint(t: jax.Array) -> jax.Array:
    """``round(t)`` (half to even) as int32 for ``0 <= t <= 255``, without a rounding op.

    The sum rounds to the integer nearest ``t``, ties to even, as every float addition
    rounds; its low mantissa bits are that integer. The compiler vectorizes an addition
    and a subtraction of bits, not its rounding instruction."""
    return jax.lax.bitcast_convert_type(t + _MAGIC, jnp.int32) - int(_MAGIC.view(np.int32))


def _linear_codes(v: jax.Array, unsigned: jax.Array) -> jax.Array:
    signed = _rint(jnp.clip((v + 1.0) * 127.0, 0, 254))
    positive = _rint(jnp.clip(v * 255.0, 0, 255))
    positive = jnp.where(v > 0, jnp.maximum(positive, 1), positive)  # as above
    return jnp.where(unsigned, positive, signed).astype(jnp.uint8)


def _linear_values(codes: jax.Array, unsigned: jax.Array) -> jax.Array:
    c = codes.astype(jnp.float32)
    return jnp.where(unsigned, c / 255.0, jnp.minimum(c / 127.0 - 1.0, 1.0))


_CODERS = {"dynamic": (_dynamic_codes, _dynamic_values), "linear": (_linear_codes, _linear_values)}


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
