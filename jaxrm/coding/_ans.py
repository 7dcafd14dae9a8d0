"""rANS coding with ``constriction``'s coder, behind a self-describing section.

The coder is ``constriction.stream.stack.AnsCoder``: one rANS stack with a
64-bit state that emits 32-bit words, over a categorical model of precision
24. The model is our own quantized histogram, stored in the section: the used
symbols are renumbered ``0..m-1`` and their frequencies ``f`` (summing to
``2**p``) are handed to ``constriction`` as the weights ``f * 2**(24-p) - 1``,
which its fast quantization (one slot per symbol plus the weights, here
exactly summing to ``2**24``) maps back to ``f * 2**(24-p)`` without rounding.
So a section is a plain rANS stream over the stored frequencies: the tests
decode it with a reference decoder written from that definition alone.

Symbols are processed in pieces (``_bits.chunks``): encoding pushes the last
piece first onto the stack, decoding pops pieces in order, so temporaries stay
a few bytes a symbol whatever the stream's length.

Section layout (little-endian)::

    u32     0 (this layout; the lane layout of ``_ans_lanes`` starts with its
            lane count, at least 1, and is still read)
    u8      table mode: 0 = bitmap of the used symbols among 0..A-1,
            1 = list of the m used symbols, 2 = one symbol (no words)
    varint  A (mode 0) or m (modes 1, 2)
    mode 0: A bits, 1 where used; mode 1: m increasing symbols, `width` bits
            each; mode 2: the symbol, `width` bits (each byte padded)
    [m >= 2:] u8 p; u8 w; m frequencies minus 1, w bits each, byte padded
    words: the coder's compressed words, u32 each
"""

from __future__ import annotations

import constriction
import numpy as np

from jaxrm.coding import _ans_lanes, _bits
from jaxrm.coding._bits import ByteReader, FormatError, bit_width, pack_fixed, unpack_fixed
from jaxrm.coding._freq import quantize, quantize_list

__all__ = ["MAX_SYMBOLS", "PRECISION", "decode", "encode", "precision_for"]

PRECISION = 24  # constriction's Categorical
MAX_SYMBOLS = 1 << 23  # used symbols; constriction needs fewer than 2**24
_MARK = b"\x00\x00\x00\x00"
_ZERO_WORD = bytes(4)
_WORD = np.dtype("<u4")  # the stored words


def precision_for(n: int, m: int) -> int:
    """Bits of the stored frequencies for ``n`` symbols of which ``m`` differ.

    Finer than about ``1/n`` buys nothing for a histogram of ``n`` counts and
    costs table bits, which dominate small streams; at least twice ``m`` slots.
    """
    return min(PRECISION, max(bit_width(m - 1) + 1, bit_width(n)))


def _model(weights: np.ndarray):
    return constriction.stream.model.Categorical(weights, perfect=False)


def _weights(freq: np.ndarray, p: int) -> np.ndarray:
    """``constriction``'s weights for the stored frequencies (see the module doc)."""
    weights = freq * float(1 << (PRECISION - p))  # int64 * float: float64, exact
    weights -= 1.0
    return weights


def _table(counts: np.ndarray, used: np.ndarray, n: int, width: int):
    """The section's head and the model's weights, for ``m = len(used) >= 2`` symbols."""
    m = len(used)
    p = precision_for(n, m)
    if m <= _bits.SMALL:  # numpy's per-call cost would be most of the work
        c = counts[used]
        if (1 << p) % n == 0:  # n a power of two: every share is exact, none rounded
            step = (1 << p) // n
            freq = (c * step).tolist()  # = quantize(c, p)
            weights = c * float(step << (PRECISION - p))
        else:
            freq = quantize_list(c.tolist(), p)
            weights = np.array(freq, np.float64)
            weights *= float(1 << (PRECISION - p))
        weights -= 1.0  # _weights(freq, p), exactly, without its int64 array
        w = bit_width(max(freq) - 1)
        stored = _bits.pack_list(freq, w, minus=1)
    else:
        freq = quantize(counts[used], p, positive=True)
        w = bit_width(int(freq.max()) - 1)
        stored = pack_fixed(freq - 1, w)
        weights = _weights(freq, p)
    return _MARK + _symbol_table(counts, used, width) + bytes((p, w)) + stored, weights


def _symbol_table(counts: np.ndarray, used: np.ndarray, width: int) -> bytes:
    """The used symbols: a bitmap up to the last one, or their list where that is shorter."""
    a = int(used[-1]) + 1
    if a <= len(used) * width:
        return b"\x00" + _bits.varint(a) + np.packbits(counts[:a] > 0).tobytes()
    return b"\x01" + _bits.varint(len(used)) + pack_fixed(used, width)


def _degenerate(used, width: int) -> bytes:
    if len(used) == 0:
        return _MARK + b"\x01" + _bits.varint(0)
    return _MARK + b"\x02" + _bits.varint(1) + _bits.pack_list([int(used[0])], width)


def encode(
    sym: np.ndarray, alphabet: int, width: int, *, counts: np.ndarray | None = None
) -> bytes:
    """rANS-codes ``sym`` (integers in ``[0, alphabet)``) into a section.

    Args:
      sym: the symbols, any integer dtype (not copied whole).
      alphabet: symbols lie in ``[0, alphabet)``.
      width: bits of a symbol, ``bit_width(alphabet - 1)``.
      counts: ``np.bincount(sym, minlength=alphabet)`` when the caller has it.

    Returns:
      The section's bytes.

    Raises:
      ValueError: more than ``MAX_SYMBOLS`` distinct symbols.
    """
    sym = np.asarray(sym).reshape(-1)
    n = len(sym)
    if counts is None:
        counts = _bits.histogram(sym, alphabet)
    used = counts.nonzero()[0]  # counts are non-negative
    m = len(used)
    if m > MAX_SYMBOLS:
        raise ValueError(f"{m} distinct symbols exceed the rANS limit of {MAX_SYMBOLS}")
    if m < 2:
        return _degenerate(used, width)
    head, weights = _table(counts, used, n, width)
    model = _model(weights)
    lo = int(used[0])
    rank = None  # used symbols in one run from lo: their ranks are the symbols minus lo
    if int(used[-1]) - lo != m - 1:
        rank = np.zeros(alphabet, np.int32)
        rank[used] = np.arange(m, dtype=np.int32)
    coder = constriction.stream.stack.AnsCoder()
    for s, e in reversed([(0, n)] if n <= _bits._CHUNK else list(_bits.chunks(n))):
        piece = sym[s:e]
        if rank is not None:
            ranks = rank.take(piece)
        elif lo:
            ranks = piece.astype(np.int32)
            ranks -= lo
        else:
            ranks = piece.astype(np.int32, copy=False)
        coder.encode_reverse(ranks, model)
    return head + coder.get_compressed().astype(_WORD, copy=False).tobytes()


def _read_symbols(r: ByteReader, mode: int, alphabet: int, width: int) -> np.ndarray:
    if mode == 0:
        a = r.varint(alphabet)
        bits = np.unpackbits(np.frombuffer(r.take(-(-a // 8)), np.uint8), count=a)
        return bits.nonzero()[0]
    if mode in (1, 2):
        m = r.varint(min(alphabet, MAX_SYMBOLS))
        if mode == 2 and m != 1:
            raise FormatError("single-symbol rANS table with another count")
        used = unpack_fixed(r.take(-(-m * width // 8)), m, width).astype(np.int64)
        if m and (np.any(np.diff(used) <= 0) or used[-1] >= alphabet):
            raise FormatError("rANS table symbols are not increasing and in range")
        return used
    raise FormatError(f"unknown rANS table mode {mode}")


def _symbols(ranks: np.ndarray, table: np.ndarray | None, lo: int, out=None) -> np.ndarray:
    """The used symbols of decoded ``ranks`` (``int32``, below the table's length)."""
    if table is not None:
        return table.take(ranks, out=out, mode="clip")
    ranks = ranks.view(np.uint32)
    if out is None and not lo:
        return ranks
    return np.add(ranks, np.uint32(lo), out=ranks if out is None else out)  # the coder's array


def decode(data: bytes | memoryview, count: int, alphabet: int, width: int) -> np.ndarray:
    """Decodes ``count`` symbols from a section made by [`encode`][jaxrm.coding.encode].

    Sections of the earlier lane layout (``_ans_lanes``) are read too.

    Raises:
      FormatError: the section is not a well-formed stream of ``count`` symbols.
    """
    r = ByteReader(data)
    if r.data[:4] != _MARK:
        return _ans_lanes.decode(r.data, count, alphabet, width)
    r.pos = 4
    used = _read_symbols(r, r.uint(1), alphabet, width)
    m = len(used)
    if m < 2:
        r.end()
        if (m == 0) != (count == 0):
            raise FormatError("rANS table disagrees with the symbol count")
        return np.full(count, used[0] if m else 0, np.uint32)
    if count == 0:
        raise FormatError("empty rANS stream with content")
    p, w = r.uint(1), r.uint(1)
    if not (m - 1).bit_length() < p <= PRECISION or w > p:
        raise FormatError("bad rANS frequency precision")
    stored = r.take(-(-m * w // 8))
    freq = unpack_fixed(stored, m, w)  # the frequencies minus 1
    total = int(freq.sum()) + m
    scale = float(1 << (PRECISION - p))
    weights = freq * scale
    weights += scale - 1.0  # _weights(freq + 1, p), exactly
    if total != 1 << p:
        raise FormatError(f"rANS frequencies do not sum to 2**{p}")
    rest = r.take(r.remaining())
    if len(rest) % 4:
        raise FormatError("rANS word stream is not a whole number of words")
    if rest[-4:] == _ZERO_WORD:
        raise FormatError("rANS word stream does not end in its head word")
    words = np.frombuffer(rest, _WORD).astype(np.uint32, copy=False)
    coder = constriction.stream.stack.AnsCoder(words)
    model = _model(weights)
    # Ranks are below m; with the used symbols in one run from lo they are symbols - lo.
    lo = int(used[0])
    table = None if int(used[-1]) - lo == m - 1 else used.astype(np.uint32)
    if count <= _bits._CHUNK:
        out = _symbols(coder.decode(model, count), table, lo)
    else:
        out = np.empty(count, np.uint32)
        for s, e in _bits.chunks(count):
            _symbols(coder.decode(model, e - s), table, lo, out[s:e])
    if not coder.is_empty():
        raise FormatError("rANS stream does not end in its initial state")
    return out
