"""The 8-bit maps of the blockwise optimizer state and their coders.

``dynamic_map`` (Dettmers et al. 2022's dynamic tree) and ``linear_map`` give
the 256 code values; ``CODERS[mapping]`` is ``(to_codes, to_values)``: the
nearest code of each entry of ``x / absmax`` in ``[-1, 1]``, and back.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CODERS", "MAPS", "dynamic_map", "linear_map"]


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


MAPS = {"dynamic": dynamic_map, "linear": linear_map}


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


CODERS = {"dynamic": (_dynamic_codes, _dynamic_values), "linear": (_linear_codes, _linear_values)}
