"""Optimizer state stored in blockwise 8-bit codes (Dettmers et al. 2022)."""

from __future__ import annotations

import dataclasses
import functools
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


def _blocks(flat: jax.Array, block: int) -> jax.Array:
    pad = (-flat.size) % block
    return jnp.pad(flat, (0, pad)).reshape(-1, block)


_LN10 = np.float32(np.log(10.0))


def _map_constants(signed: bool) -> tuple[float, float, float]:
    """(codes in decade 0, the smallest and the largest positive code below 1)."""
    table = dynamic_map(signed)
    return (1.0 if signed else 2.0), float(table[table > 0].min()), float(table[-2])


@functools.cache
def _decade_floors(signed: bool) -> tuple[tuple[int, float], ...]:
    """For decades 1..6, the midpoint between its lowest code and the code below it."""
    table = dynamic_map(signed).astype(np.float64)
    out = []
    for j in range(1, 7):
        bottom = table[(table >= 10.0 ** (j - 7)) & (table > 0)].min()
        below = table[(table < bottom) & (table >= 0)].max()
        out.append((j, float((bottom + below) / 2)))
    return tuple(out)


def _dynamic_codes(v: jax.Array, signed: bool) -> jax.Array:
    # The code of the bin holding v, found arithmetically: decade by comparisons, then
    # the linear bin inside it (a table search would take eight gathers per entry, and
    # gathers are what a CPU does slowest). Each code is its bin's centre, so the error
    # is at most half a bin.
    a = jnp.abs(v)
    i = sum((a >= np.float32(10.0 ** (j - 7))).astype(jnp.float32) for j in range(1, 7))
    n0, smallest, top = _map_constants(signed)
    n = n0 * jnp.exp2(i)
    f = a * jnp.exp((6.0 - i) * _LN10)
    k = jnp.clip(jnp.floor((f - 0.1) * (n / 0.9)), 0, n - 1)
    offset = n - n0 + k  # codes in the decades below, plus the bin
    # The bottom bin of a decade reaches below its code's midpoint with the top code of
    # the decade under it: step down there, so every entry gets its nearest code.
    lower = sum(jnp.where(i == j, np.float32(m), 0.0) for j, m in _decade_floors(signed))
    offset = offset - ((k == 0) & (i >= 1) & (a < lower)).astype(offset.dtype)
    small = a < np.float32(smallest / 2)  # nearer 0 than the smallest code
    if signed:
        code = jnp.where(v >= 0, 128 + offset, 126 - offset)
        code = jnp.where(small, 127, code)
        code = jnp.where(v >= (1.0 + top) / 2, 255, code)
    else:
        # A positive entry never becomes 0: the unsigned map codes second moments, and a
        # moment rounded to 0 under a surviving first moment would divide by ~eps.
        code = jnp.where(a == 0, 0, jnp.where(small, 1, 1 + offset))
        code = jnp.where(v >= (1.0 + top) / 2, 255, code)
    return code.astype(jnp.uint8)


def _dynamic_values(codes: jax.Array, signed: bool) -> jax.Array:
    c = codes.astype(jnp.float32)
    n0 = 1.0 if signed else 2.0
    # position among the codes of one sign, counted outward from 0
    o = jnp.where(c >= 128, c - 128, 126 - c) if signed else c - 1
    # decade i holds offsets [n0 (2^i - 1), n0 (2^(i+1) - 1))
    i = sum((o >= n0 * (2.0**j - 1)).astype(jnp.float32) for j in range(1, 7))
    n = n0 * jnp.exp2(i)
    k = o - (n - n0)
    mag = jnp.exp((i - 6.0) * _LN10) * (0.1 + 0.9 * (k + 0.5) / n)
    if signed:
        out = jnp.where(c < 127, -mag, mag)
        out = jnp.where(c == 127, 0.0, out)
    else:
        out = jnp.where(c == 0, 0.0, mag)
    return jnp.where(c == 255, 1.0, out)


def _linear_codes(v: jax.Array, signed: bool) -> jax.Array:
    if signed:
        return jnp.clip(jnp.round((v + 1.0) * 127.0), 0, 254).astype(jnp.uint8)
    codes = jnp.clip(jnp.round(v * 255.0), 0, 255)
    return jnp.where(v > 0, jnp.maximum(codes, 1), codes).astype(jnp.uint8)  # as above


def _linear_values(codes: jax.Array, signed: bool) -> jax.Array:
    c = codes.astype(jnp.float32)
    return jnp.minimum(c / 127.0 - 1.0, 1.0) if signed else c / 255.0


_CODERS = {"dynamic": (_dynamic_codes, _dynamic_values), "linear": (_linear_codes, _linear_values)}


@functools.partial(jax.jit, static_argnames=("block", "mapping"))
def _quantize(x: jax.Array, block: int, mapping: str) -> tuple[jax.Array, ...]:
    flat = x.reshape(-1).astype(jnp.float32)
    blocks = _blocks(flat, block)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    unsigned = jnp.all(flat >= 0)
    normed = blocks / jnp.where(absmax > 0, absmax, 1.0)[:, None]
    to_codes = _CODERS[mapping][0]
    codes = jnp.where(unsigned, to_codes(normed, False), to_codes(normed, True))
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
    to_values = _CODERS[q.mapping][1]
    n = int(np.prod(q.shape, dtype=np.int64))
    normed = jnp.where(q.unsigned, to_values(q.codes, False), to_values(q.codes, True))
    values = _blocks(normed, q.block) * q.absmax[:, None]
    return values.reshape(-1)[:n].reshape(q.shape).astype(q.dtype)


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
