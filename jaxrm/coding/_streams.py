"""Integer symbol streams: one codec interface over fixed, Huffman and rANS coding."""

from __future__ import annotations

import numpy as np

from jaxrm.coding import _ans, _huffman
from jaxrm.coding._bits import FormatError, bit_width, histogram, pack_fixed, unpack_fixed

__all__ = [
    "CODECS", "ENTROPY_MODES", "MAX_ENTROPY_ALPHABET", "decode", "encode", "estimate_bits",
    "estimate_rows", "floor_bytes",
]

ENTROPY_MODES = {"huffman": "huffman", "ans": "ans", "none": "fixed"}
CODECS = ("fixed", "huffman", "ans")
# Entropy coders keep per-symbol tables; wider alphabets are packed at fixed width.
MAX_ENTROPY_ALPHABET = 1 << 17


def _codec_for(codec: str, counts: np.ndarray | None, alphabet: int) -> str:
    if codec == "fixed" or alphabet > MAX_ENTROPY_ALPHABET:
        return "fixed"
    # rANS quantizes probabilities to 2**16: with many symbols Huffman codes better
    if codec == "ans" and counts is not None and np.count_nonzero(counts) > 4096:
        return "huffman"
    return codec


def encode(sym: np.ndarray, alphabet: int, codec: str) -> tuple[bytes, dict]:
    """Codes integers in ``[0, alphabet)``; returns the section and its manifest entry.

    ``codec="ans"`` keeps rANS only where its section is smaller than Huffman's
    (Huffman on a tie). Huffman is coded too only where its size, bounded from
    below by the histogram, could come out no larger than the rANS section.
    """
    sym = np.asarray(sym).reshape(-1)
    width = bit_width(alphabet - 1)
    counts = histogram(sym, alphabet) if alphabet <= MAX_ENTROPY_ALPHABET else None
    codec = _codec_for(codec, counts, alphabet)
    if codec == "fixed":
        data = pack_fixed(sym, width)
    elif codec == "huffman":
        data = _huffman.encode(sym, alphabet, width, counts=counts)
    else:
        data = _ans.encode(sym, alphabet, width, counts=counts)
        if len(data) >= _huffman.floor_bytes(counts, width):
            alt = _huffman.encode(sym, alphabet, width, counts=counts)
            if len(alt) <= len(data):
                data, codec = alt, "huffman"
    return data, {"codec": codec, "count": len(sym), "alphabet": alphabet}


def floor_bytes(sym: np.ndarray, alphabet: int, codec: str) -> int:
    """Bytes `encode` gives ``sym`` at least (exact for fixed width; 0 for rANS)."""
    sym = np.asarray(sym).reshape(-1)
    width = bit_width(alphabet - 1)
    counts = histogram(sym, alphabet) if alphabet <= MAX_ENTROPY_ALPHABET else None
    codec = _codec_for(codec, counts, alphabet)
    if codec == "fixed":
        return -(-len(sym) * width // 8) if width else 0
    return _huffman.floor_bytes(counts, width) if codec == "huffman" else 0


def decode(data: bytes | memoryview, meta: dict) -> np.ndarray:
    """Decodes a stream; ``meta`` was validated by the container parser."""
    codec, count, alphabet = meta["codec"], meta["count"], meta["alphabet"]
    width = bit_width(alphabet - 1)
    if codec == "fixed":
        if len(data) != -(-count * width // 8):
            raise FormatError("fixed-width section length disagrees with its count")
        out = unpack_fixed(data, count, width)
    elif codec == "huffman":
        out = _huffman.decode(data, count, alphabet, width)
    elif codec == "ans":
        out = _ans.decode(data, count, alphabet, width)
    else:
        raise FormatError(f"unknown codec {codec!r}")
    if len(out) != count or (count and int(out.max()) >= alphabet):
        raise FormatError("decoded symbols fall outside the alphabet")
    return out


def _table_bits(alphabet, used, width):
    """Estimated bits of a stream's table (scalars or arrays of streams)."""
    return np.minimum(alphabet * 5, used * (width + 5)) + 80


def _ans_bits(entropy, table):
    """Estimated bits of a rANS section: entropy, coder overhead and its tables."""
    return entropy * 1.004 + table * 3


def estimate_bits(counts: np.ndarray, codec: str, *, or_huffman: bool = False) -> float:
    """Estimated coded size in bits of a stream with histogram ``counts``.

    With ``or_huffman``, the smaller of the estimates for ``codec`` and for
    Huffman (the writer keeps the smaller of rANS and Huffman).
    """
    alphabet = len(counts)
    width = bit_width(alphabet - 1)
    if codec == "fixed" or alphabet > MAX_ENTROPY_ALPHABET:
        return float(int(counts.sum()) * width)
    c = counts[counts > 0]
    used = len(c)
    n = int(c.sum())
    if n == 0:
        return 0.0
    table = int(_table_bits(alphabet, used, width))
    cf = c.astype(np.float64)
    entropy = float(-(cf * np.log2(cf / n)).sum())
    if used > 4096:  # rANS falls back to Huffman here; building the code would be slow
        return entropy + 0.03 * n + table
    ans = _ans_bits(entropy, table)
    if codec == "ans" and not or_huffman:  # no Huffman code to build
        return ans
    huffman = _huffman.cost(c) + table
    if codec == "huffman":
        return float(huffman)
    return min(ans, huffman)


def estimate_rows(hists: np.ndarray, alphabets: list[int], codec: str) -> np.ndarray:
    """`estimate_bits` of each stream ``hists[i, :alphabets[i]]`` (entropy codecs).

    The streams' entropies and tables are computed together; a Huffman
    estimate needs each stream's code too, built one by one.
    """
    alphabet = np.asarray(alphabets, np.int64)
    width = np.array([bit_width(a - 1) for a in alphabets], np.int64)
    used = np.count_nonzero(hists, axis=1)
    n = hists.sum(axis=1)
    cf = hists.astype(np.float64)
    share = cf / np.maximum(n, 1)[:, None]
    entropy = -(cf * np.log2(np.where(cf > 0, share, 1.0))).sum(axis=1)
    table = _table_bits(alphabet, used, width)
    apart = (n == 0) | (used > 4096) | (alphabet > MAX_ENTROPY_ALPHABET)  # other formulas
    if codec == "ans":
        out = _ans_bits(entropy, table)
    else:
        out = table.astype(np.float64)
        for i in np.flatnonzero(~apart):
            out[i] += _huffman.cost(hists[i])
    for i in np.flatnonzero(apart):
        out[i] = estimate_bits(hists[i, : alphabets[i]], codec)
    return out
