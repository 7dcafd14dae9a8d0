"""Bit-level helpers: the format error, a bounds-checked reader, fixed-width packing."""

from __future__ import annotations

import numpy as np

__all__ = ["ByteReader", "FormatError", "bit_width", "pack_fixed", "unpack_fixed"]

# Symbols are processed in chunks so that the (n, width) bit matrix stays small.
_CHUNK = 1 << 20


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
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    parts = []
    for start in range(0, symbols.size, _CHUNK):  # _CHUNK is a multiple of 8
        chunk = symbols[start : start + _CHUNK].astype(np.uint64)
        bits = ((chunk[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        parts.append(np.packbits(bits.reshape(-1)))
    return np.concatenate(parts).tobytes()


def unpack_fixed(data: bytes | memoryview, count: int, width: int) -> np.ndarray:
    """Inverse of `pack_fixed`: returns ``count`` integers as ``uint32``."""
    if count == 0:
        return np.zeros(0, np.uint32)
    if width == 0:
        return np.zeros(count, np.uint32)
    raw = np.frombuffer(data, np.uint8)
    if raw.size * 8 < count * width:
        raise FormatError("fixed-width stream is shorter than its symbol count")
    weights = (np.uint64(1) << np.arange(width - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)
    out = np.empty(count, np.uint32)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        first_byte = start * width // 8
        nbytes = -(-n * width // 8)
        bits = np.unpackbits(raw[first_byte : first_byte + nbytes], count=n * width)
        out[start : start + n] = (bits.reshape(n, width).astype(np.uint64) @ weights).astype(
            np.uint32
        )
    return out


class ByteReader:
    """Reads little-endian integers and byte ranges, refusing to run past the end."""

    def __init__(self, data: bytes | memoryview):
        self.data = memoryview(data)
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> memoryview:
        if n < 0 or n > self.remaining():
            raise FormatError(
                f"needs {n} bytes at offset {self.pos}, only {self.remaining()} remain"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes), "little")

    def end(self) -> None:
        if self.remaining():
            raise FormatError(f"{self.remaining()} unexpected trailing bytes")
