"""Bit-level helpers: the format error, a bounds-checked reader, fixed-width packing."""

from __future__ import annotations

import numpy as np

__all__ = [
    "ByteReader", "FormatError", "bit_width", "chunks", "histogram", "pack_fixed", "pack_list",
    "unpack_fixed", "varint",
]

# Symbols are processed in chunks so that the (n, width) bit matrix stays small.
_CHUNK = 1 << 20
SMALL = 64  # pack this few integers with Python ints
# Place values of a ``width``-bit integer, MSB first: bits (uint8) dot these
# give the integer in uint32 directly, with no wider temporary.
_WEIGHTS = [np.left_shift(np.uint32(1), np.arange(w - 1, -1, -1, dtype=np.uint32))
            for w in range(33)]


class FormatError(ValueError):
    """Raised for any input that is not a well-formed ``.jrm`` file.

    A subclass of ``ValueError``: truncated or extended data, a changed byte
    (caught by the CRC32 checks), a wrong magic number, an unknown version,
    a manifest whose sizes disagree with its sections, or sizes beyond the
    decoder's limits.
    """


def bit_width(max_symbol: int) -> int:
    """Bits needed to write the integers ``0..max_symbol`` (0 for ``max_symbol <= 0``)."""
    return int(max_symbol).bit_length() if max_symbol > 0 else 0


def pack_fixed(symbols: np.ndarray, width: int) -> bytes:
    """Packs unsigned integers below ``2**width`` MSB-first, ``width`` bits each."""
    symbols = np.asarray(symbols).reshape(-1)
    if symbols.size == 0 or width == 0:
        return b""
    if not 1 <= width <= 32:
        raise ValueError(f"width must be in [1, 32], got {width}")
    if symbols.size <= SMALL:  # tables of small streams: numpy's call overheads dominate
        return pack_list(symbols.tolist(), width)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    parts = []
    for start in range(0, symbols.size, _CHUNK):  # _CHUNK is a multiple of 8
        chunk = symbols[start : start + _CHUNK].astype(np.uint64)
        bits = ((chunk[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        parts.append(np.packbits(bits.reshape(-1)))
    return np.concatenate(parts).tobytes()


def pack_list(values: list[int], width: int, minus: int = 0) -> bytes:
    """`pack_fixed` of a short Python list, in Python ints.

    Writes ``v - minus`` for each value ``v`` (each result below ``2**width``).
    """
    big = 0
    for v in values:
        big = (big << width) | (v - minus)
    nbits = len(values) * width
    return (big << (-nbits % 8)).to_bytes(-(-nbits // 8), "big")


def unpack_fixed(data: bytes | memoryview, count: int, width: int) -> np.ndarray:
    """Inverse of `pack_fixed`: returns ``count`` integers as ``uint32``."""
    if count == 0:
        return np.zeros(0, np.uint32)
    if width == 0:
        return np.zeros(count, np.uint32)
    raw = np.frombuffer(data, np.uint8)
    if raw.size * 8 < count * width:
        raise FormatError("fixed-width stream is shorter than its symbol count")
    weights = _WEIGHTS[width]
    if count <= _CHUNK:  # one piece: no output buffer to fill
        return np.unpackbits(raw, count=count * width).reshape(count, width).dot(weights)
    out = np.empty(count, np.uint32)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        first_byte = start * width // 8
        nbytes = -(-n * width // 8)
        bits = np.unpackbits(raw[first_byte : first_byte + nbytes], count=n * width)
        out[start : start + n] = bits.reshape(n, width).dot(weights)
    return out


class ByteReader:
    """Reads little-endian integers and byte ranges, refusing to run past the end."""

    def __init__(self, data: bytes | memoryview):
        self.data = memoryview(data)
        if self.data.format != "B":  # index bytes, whatever view came in
            self.data = self.data.cast("B")
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> memoryview:
        pos = self.pos
        if n < 0 or pos + n > len(self.data):
            raise FormatError(f"needs {n} bytes at offset {pos}, only {self.remaining()} remain")
        self.pos = pos + n
        return self.data[pos : pos + n]

    def uint(self, nbytes: int) -> int:
        if nbytes == 1 and self.pos < len(self.data):  # the common case, without a slice
            self.pos += 1
            return self.data[self.pos - 1]
        return int.from_bytes(self.take(nbytes), "little")

    def varint(self, limit: int) -> int:
        """Reads a LEB128 integer, refusing values above ``limit``."""
        x = shift = 0
        while True:
            byte = self.uint(1)
            x |= (byte & 0x7F) << shift
            if x > limit:
                raise FormatError(f"integer at offset {self.pos} exceeds {limit}")
            if not byte & 0x80:
                return x
            shift += 7

    def end(self) -> None:
        if self.remaining():
            raise FormatError(f"{self.remaining()} unexpected trailing bytes")


def chunks(n: int, size: int = _CHUNK):
    """``(start, stop)`` pairs covering ``range(n)`` in pieces of ``size``."""
    return ((s, min(s + size, n)) for s in range(0, n, size))


def histogram(sym: np.ndarray, alphabet: int) -> np.ndarray:
    """``np.bincount`` of ``sym`` with ``minlength=alphabet``, piece by piece.

    ``np.bincount`` converts its input to ``intp`` first (8 bytes a symbol);
    pieces keep that copy small.
    """
    if len(sym) <= _CHUNK:
        return np.bincount(sym, minlength=alphabet)[:alphabet].astype(np.int64, copy=False)
    counts = np.zeros(alphabet, np.int64)
    for s, e in chunks(len(sym)):
        counts += np.bincount(sym[s:e], minlength=alphabet)[:alphabet]
    return counts


def varint(x: int) -> bytes:
    """``x >= 0`` in LEB128: 7 bits a byte, low bits first."""
    out = bytearray()
    while True:
        byte, x = x & 0x7F, x >> 7
        out.append(byte | (0x80 if x else 0))
        if not x:
            return bytes(out)
