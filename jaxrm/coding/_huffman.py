"""Canonical Huffman coding, vectorised with numpy.

Encoding computes every symbol's bit offset with a cumulative sum and ORs the
codes into 64-bit words in one pass. Decoding is table driven: a table over
the next ``L`` bits (``L`` the longest code length) gives symbol and length.
The stream is cut into ``P`` lanes of ``K`` consecutive symbols whose bit
lengths are stored, so all lanes are decoded in lockstep: ``K`` numpy steps
over ``P`` lanes instead of a Python step per symbol.

Section layout (all integers little-endian)::

    u8   table mode: 0 = dense (lengths of symbols 0..A-1), 1 = sparse
    u32  A (dense: alphabet prefix length) or m (sparse: used symbols)
    [sparse: m symbols, `width` bits each, byte padded]
    lengths, 5 bits each, byte padded
    u32  P lanes; u8 offset width w; u32 base
    P-1 lane bit lengths minus base, w bits each, byte padded
    u8   padding bits of the payload (0..7)
    payload: the codes, MSB first
"""

from __future__ import annotations

import heapq

import numpy as np

from jaxrm.coding._bits import ByteReader, FormatError, bit_width, pack_fixed, unpack_fixed

__all__ = ["MAX_LEN", "code_lengths", "canonical_codes", "decode", "encode"]

MAX_LEN = 20  # longest code; windows of MAX_LEN + 7 bits fit a uint32
MAX_STEPS = 1024  # symbols per lane: bounds the decoder's Python loop
_LANE_BUDGET = 0.004  # lane offsets may cost this fraction of the payload


def _huffman_depths(counts: np.ndarray) -> np.ndarray:
    """Unlimited Huffman code lengths of positive ``counts`` (heapq, ties by order)."""
    m = len(counts)
    heap = [(int(c), i) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    parent = list(range(2 * m - 1))
    nxt = m
    while len(heap) > 1:
        c1, a = heapq.heappop(heap)
        c2, b = heapq.heappop(heap)
        parent[a] = parent[b] = nxt
        heapq.heappush(heap, (c1 + c2, nxt))
        nxt += 1
    depth = [0] * (2 * m - 1)
    for node in range(2 * m - 3, -1, -1):  # parents have larger ids than children
        depth[node] = depth[parent[node]] + 1
    return np.asarray(depth[:m], np.int64)


def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code lengths for a histogram, limited to ``max_len`` bits.

    Unused symbols get length 0. With one used symbol its length is 0 too (the
    stream needs no bits). Without the limit binding, the lengths are exactly
    Huffman's (minimum total cost); when the limit binds, lengths are adjusted
    as in JPEG (Annex K.3), keeping the Kraft sum equal to 1.

    Args:
      counts: non-negative integer histogram.
      max_len: the longest allowed code.

    Returns:
      ``int64`` array of code lengths, one per symbol.
    """
    counts = np.asarray(counts, np.int64)
    lengths = np.zeros(len(counts), np.int64)
    used = np.flatnonzero(counts)
    if len(used) <= 1:
        return lengths
    if len(used) > (1 << max_len):
        raise ValueError(f"{len(used)} symbols do not fit codes of at most {max_len} bits")
    depth = _huffman_depths(counts[used])
    if depth.max() > max_len:
        bl = np.bincount(depth, minlength=depth.max() + 1).tolist()
        for i in range(len(bl) - 1, max_len, -1):
            while bl[i] > 0:
                j = i - 2
                while bl[j] == 0:
                    j -= 1
                bl[i] -= 2
                bl[i - 1] += 1
                bl[j + 1] += 2
                bl[j] -= 1
        # most frequent symbols get the shortest codes
        order = np.lexsort((used, -counts[used]))
        new = np.repeat(np.arange(len(bl)), bl)
        depth = np.empty_like(depth)
        depth[order] = new
    lengths[used] = depth
    return lengths


def canonical_codes(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Canonical codes of ``lengths`` (symbols ordered by (length, symbol)).

    Returns:
      ``(codes, order, max_len)``: ``codes[s]`` is the code of symbol ``s``
      (``uint64``), ``order`` the used symbols in canonical order.
    """
    lengths = np.asarray(lengths, np.int64)
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    codes = np.zeros(len(lengths), np.uint64)
    if len(order) == 0:
        return codes, order, 0
    lmax = int(lengths[order].max())
    span = np.int64(1) << (lmax - lengths[order])  # Kraft share at resolution lmax
    left = np.concatenate([[0], np.cumsum(span)[:-1]])
    codes[order] = (left >> (lmax - lengths[order])).astype(np.uint64)
    return codes, order, lmax


def _pack_stream(sym: np.ndarray, lens: np.ndarray, codes: np.ndarray):
    """ORs the codes of ``sym`` into an MSB-first bit string; returns (bytes, ends)."""
    ln = lens[sym]
    ends = np.cumsum(ln)
    total = int(ends[-1]) if len(ends) else 0
    if total == 0:
        return b"", ends
    # each code left-aligned in a 64-bit word, then shifted to its bit offset
    aligned = np.where(lens > 0, codes << (64 - np.maximum(lens, 1)).astype(np.uint64), 0)
    v = aligned.astype(np.uint64)[sym]
    starts = ends - ln
    offset = (starts & 63).astype(np.uint64)
    first = v >> offset
    # codes are at most MAX_LEN < 64 bits long, so a symbol starts in every
    # word but perhaps the last, which may hold only the tail of a spilled code
    group = np.searchsorted(starts, np.arange(0, total, 64))
    words = np.zeros(len(group), np.uint64)
    nstart = int(np.count_nonzero(group < len(sym)))
    words[:nstart] = np.bitwise_or.reduceat(first, group[:nstart])
    spill = np.flatnonzero(starts & 63 > 64 - ln)
    if len(spill):
        words[(starts[spill] >> 6) + 1] |= v[spill] << (np.uint64(64) - offset[spill])
    return words.astype(">u8").tobytes()[: (total + 7) // 8], ends


def _table(lengths: np.ndarray, width: int, counts: np.ndarray) -> bytes:
    if np.count_nonzero(counts) == 1:  # one symbol: no bits at all, just its name
        return b"\x02" + int(np.flatnonzero(counts)[0]).to_bytes(4, "little")
    used = np.flatnonzero(lengths)
    a = int(used[-1]) + 1 if len(used) else 0
    dense_bits = a * 5
    sparse_bits = len(used) * (width + 5)
    if dense_bits <= sparse_bits:
        return b"\x00" + a.to_bytes(4, "little") + pack_fixed(lengths[:a], 5)
    return (
        b"\x01"
        + len(used).to_bytes(4, "little")
        + pack_fixed(used, width)
        + pack_fixed(lengths[used], 5)
    )


def encode(sym: np.ndarray, alphabet: int, width: int) -> bytes:
    """Huffman-codes ``sym`` (integers in ``[0, alphabet)``) into a section."""
    sym = np.asarray(sym, np.int64).reshape(-1)
    n = len(sym)
    counts = np.bincount(sym, minlength=alphabet)
    lengths = code_lengths(counts)
    codes, _, _ = canonical_codes(lengths)
    payload, ends = _pack_stream(sym, lengths, codes)
    total = int(ends[-1]) if n else 0
    lanes = max(1, -(-n // MAX_STEPS), int(_LANE_BUDGET * total / 12)) if total else 1
    lanes = min(lanes, max(n, 1))
    k = -(-n // lanes) if n else 1
    lanes = -(-n // k) if n else 1
    lane_bits = np.diff(np.concatenate([[0], ends[k - 1 :: k][: lanes - 1]])) if n else []
    lane_bits = np.asarray(lane_bits, np.int64)
    base = int(lane_bits.min()) if len(lane_bits) else 0
    ow = bit_width(int(lane_bits.max()) - base) if len(lane_bits) else 0
    head = (
        _table(lengths, width, counts)
        + lanes.to_bytes(4, "little")
        + bytes([ow])
        + base.to_bytes(4, "little")
        + pack_fixed(lane_bits - base, ow)
        + bytes([(-total) % 8])
    )
    return head + payload


def _read_lengths(r: ByteReader, alphabet: int, width: int) -> tuple[np.ndarray, int | None]:
    mode = r.uint(1)
    m = r.uint(4)
    if mode == 2:
        if m >= alphabet:
            raise FormatError("Huffman symbol outside the alphabet")
        return np.zeros(alphabet, np.int64), m
    if m > alphabet:
        raise FormatError("Huffman table is larger than the alphabet")
    lengths = np.zeros(alphabet, np.int64)
    if mode == 0:
        lengths[:m] = unpack_fixed(r.take(-(-m * 5 // 8)), m, 5)
    elif mode == 1:
        syms = unpack_fixed(r.take(-(-m * width // 8)), m, width).astype(np.int64)
        lens = unpack_fixed(r.take(-(-m * 5 // 8)), m, 5)
        if m and (np.any(np.diff(syms) <= 0) or syms[-1] >= alphabet or np.any(lens == 0)):
            raise FormatError("Huffman table symbols are not increasing and in range")
        lengths[syms] = lens
    else:
        raise FormatError(f"unknown Huffman table mode {mode}")
    if lengths.max(initial=0) > MAX_LEN:
        raise FormatError("Huffman code length above the limit")
    return lengths, None


def decode(data: bytes | memoryview, count: int, alphabet: int, width: int) -> np.ndarray:
    """Decodes ``count`` symbols from a section made by [`encode`][jaxrm.coding.encode]."""
    r = ByteReader(data)
    lengths, single = _read_lengths(r, alphabet, width)
    lanes = r.uint(4)
    ow = r.uint(1)
    base = r.uint(4)
    if ow > 32 or lanes < 1 or lanes > max(count, 1):
        raise FormatError("bad Huffman lane header")
    lane_bits = unpack_fixed(r.take(-(-(lanes - 1) * ow // 8)), lanes - 1, ow).astype(np.int64)
    lane_bits += base
    pad = r.uint(1)
    payload = r.take(r.remaining())
    total = len(payload) * 8 - pad
    if pad > 7 or (pad and not len(payload)):
        raise FormatError("bad Huffman padding")
    used = np.flatnonzero(lengths)
    if single is not None:
        if total or lanes != 1 or count == 0:
            raise FormatError("single-symbol Huffman stream with a payload")
        return np.full(count, single, np.uint32)
    if count == 0:
        if len(used) or total or lanes != 1:
            raise FormatError("empty Huffman stream with a table or payload")
        return np.zeros(0, np.uint32)
    if len(used) < 2:
        raise FormatError("Huffman stream without a complete code")
    _codes, order, lmax = canonical_codes(lengths)
    span = np.int64(1) << (lmax - lengths[order])
    if int(span.sum()) != 1 << lmax:
        raise FormatError("Huffman code lengths violate the Kraft equality")
    if count > total:
        raise FormatError("Huffman stream shorter than its symbol count")
    k = -(-count // lanes)
    if k > MAX_STEPS or -(-count // k) != lanes:
        raise FormatError("Huffman lanes do not split the symbol count")
    starts = np.concatenate([[0], np.cumsum(lane_bits)])
    if starts[-1] > total:
        raise FormatError("Huffman lane lengths exceed the payload")
    ends = np.concatenate([starts[1:], [total]])
    table = (np.repeat(order, span) << 5) | np.repeat(lengths[order], span)
    buf = np.frombuffer(bytes(payload) + b"\x00\x00\x00\x00", np.uint8).astype(np.uint32)
    win = (buf[:-3] << 24) | (buf[1:-2] << 16) | (buf[2:-1] << 8) | buf[3:]
    win = win.astype(np.int64)
    mask = (1 << lmax) - 1
    top = 32 - lmax
    out = np.empty((k, lanes), np.int64)
    last = count - (lanes - 1) * k  # symbols in the last lane
    pos = starts.copy()
    for t in range(k):
        p = pos if t < last else pos[:-1]
        e = table[(win[p >> 3] >> (top - (p & 7))) & mask]
        out[t, : len(p)] = e
        p += e & 31
    if not np.array_equal(pos, ends):
        raise FormatError("Huffman lanes do not end where their lengths say")
    return (out.T.reshape(-1)[:count] >> 5).astype(np.uint32)
