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

from jaxrm.coding._bits import (
    ByteReader,
    FormatError,
    bit_width,
    chunks,
    histogram,
    pack_fixed,
    unpack_fixed,
)

__all__ = [
    "MAX_LEN", "MAX_STEPS", "canonical_codes", "code_lengths", "cost", "decode", "encode",
    "floor_bytes", "lane_layout",
]

MAX_LEN = 20  # longest code; windows of MAX_LEN + 7 bits fit a uint32
MAX_STEPS = 1024  # symbols per lane: bounds the decoder's Python loop
_LANE_BUDGET = 0.004  # lane offsets may cost this fraction of the payload
_CHAIN_MAX = 1 << 14  # streams up to this long decode by a walk (no per-step numpy calls)
_PIECE = 1 << 18  # symbols encoded at a time: bounds the per-symbol temporaries
_HOPS_FROM = 256  # small streams longer than this find their codes by pointer doubling


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


def cost(counts: np.ndarray) -> int:
    """Bits of an optimal Huffman code of ``counts`` (no length limit): the merged weights.

    The estimate the encoder sizes streams by; the stored code's lengths are
    limited to ``MAX_LEN`` bits, which rarely binds and then costs a little more.
    """
    heap = [int(x) for x in np.asarray(counts).tolist() if x]
    if len(heap) < 2:
        return 0
    heapq.heapify(heap)
    total = 0
    pop, replace = heapq.heappop, heapq.heapreplace
    while len(heap) > 1:
        merged = pop(heap) + heap[0]
        replace(heap, merged)
        total += merged
    return total


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


def _or_codes(words, sym, ln, ends, aligned) -> None:
    """ORs the codes of one piece of symbols into ``words`` at their bit offsets."""
    starts = ends - ln
    v = aligned[sym]
    offset = (starts & 63).astype(np.uint64)
    word = starts >> 6
    # codes are at most MAX_LEN < 64 bits long, so a code starts in every word
    # of a piece but perhaps the last, which may hold only a spilled tail
    first = np.empty(len(word), bool)
    first[0] = True
    np.not_equal(word[1:], word[:-1], out=first[1:])
    group = np.flatnonzero(first)
    words[word[group]] |= np.bitwise_or.reduceat(v >> offset, group)
    spill = np.flatnonzero(offset + ln.astype(np.uint64) > 64)
    if len(spill):
        words[word[spill] + 1] |= v[spill] << (np.uint64(64) - offset[spill])


def lane_layout(n: int, total_bits: int) -> tuple[int, int]:
    """``(lanes, symbols per lane)`` of a stream of ``n`` symbols and ``total_bits``.

    Lanes of at most ``MAX_STEPS`` symbols, and enough of them that the
    lane-parallel decoder's steps stay few, as long as their stored bit lengths
    (about 12 bits each) cost at most ``_LANE_BUDGET`` of the payload. The
    count is normalised to ``ceil(n / k)``, which the decoder checks.
    """
    if not total_bits:
        return 1, max(n, 1)
    lanes = min(max(1, -(-n // MAX_STEPS), int(_LANE_BUDGET * total_bits / 12)), n)
    k = -(-n // lanes)
    return -(-n // k), k


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


def floor_bytes(counts: np.ndarray, width: int) -> int:
    """Bytes an `encode` section of this histogram takes at least: all of it but
    the lane offsets, from the histogram alone (no coding)."""
    lengths = code_lengths(counts)
    total = int((counts * lengths).sum())
    fixed = 4 + 1 + 4 + 1  # lane count, offset width, offset base, final pad bits
    return len(_table(lengths, width, counts)) + fixed + -(-total // 8)


def encode(
    sym: np.ndarray, alphabet: int, width: int, *, counts: np.ndarray | None = None
) -> bytes:
    """Huffman-codes ``sym`` (integers in ``[0, alphabet)``) into a section.

    Args:
      sym: the symbols, any integer dtype (processed in pieces, never copied whole).
      alphabet: symbols lie in ``[0, alphabet)``.
      width: bits of a symbol, ``bit_width(alphabet - 1)``.
      counts: ``np.bincount(sym, minlength=alphabet)`` when the caller has it.

    Returns:
      The section's bytes.
    """
    sym = np.asarray(sym).reshape(-1)
    n = len(sym)
    if counts is None:
        counts = histogram(sym, alphabet)
    lengths = code_lengths(counts)
    codes, _, _ = canonical_codes(lengths)
    total = int((counts * lengths).sum())
    lanes, k = lane_layout(n, total)
    words = np.zeros(total // 64 + 2, np.uint64)
    lane_ends = np.zeros(lanes, np.int64)
    if total:
        # each code left-aligned in a 64-bit word, then shifted to its bit offset
        aligned = np.where(lengths > 0, codes << (64 - np.maximum(lengths, 1)).astype(np.uint64), 0)
        aligned = aligned.astype(np.uint64)
        lens = lengths.astype(np.uint8)
        bit = 0
        for s, e in chunks(n, max(k, _PIECE // k * k)):  # whole lanes per piece
            piece = sym[s:e]
            ln = lens[piece]
            ends = np.cumsum(ln, dtype=np.int64)
            ends += bit
            _or_codes(words, piece, ln, ends, aligned)
            full = ends[k - 1 :: k]  # the last lane's end is not stored
            lane_ends[s // k : s // k + len(full)] = full
            bit = int(ends[-1])
    lane_bits = lane_ends[: lanes - 1].copy()
    lane_bits[1:] -= lane_ends[: lanes - 2]
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
    words.byteswap(inplace=True)  # MSB first
    return b"".join((head, words.view(np.uint8)[: -(-total // 8)]))


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
    table = ((np.repeat(order, span) << 5) | np.repeat(lengths[order], span)).astype(np.uint32)
    win = _windows(payload)
    if count <= _CHAIN_MAX:
        out = _walk(win, table, lmax, count, total)
        ln = out & 31
        ends = np.cumsum(ln, dtype=np.int64)
        if not np.array_equal(ends[k - 1 :: k][: lanes - 1], starts[1:]) or ends[-1] != total:
            raise FormatError("Huffman lanes do not end where their lengths say")
        return np.right_shift(out, 5, out=out)
    return _lockstep(win, table, lmax, count, lanes, k, starts, ends)


def _windows(payload: memoryview) -> np.ndarray:
    """``win[i]``: the 32 bits from byte ``i`` on (zeros past the end), MSB first."""
    b = np.frombuffer(payload, np.uint8)
    win = np.zeros(len(b), np.uint32)
    for s, e in chunks(len(b)):
        w = win[s:e]
        for j in range(4):  # byte i + j into bits 24 - 8j..31 - 8j
            part = b[s + j : e + j].astype(np.uint32)
            part <<= np.uint32(24 - 8 * j)
            w[: len(part)] |= part
    return win


def _walk(win, table, lmax, count, total) -> np.ndarray:
    """Decodes a small stream from a table of the code starting at every bit position.

    One numpy pass decodes the code starting at each bit; the codes of the
    stream are then the chain of hops from bit 0. Up to ``_HOPS_FROM`` symbols a
    Python walk follows it (about 0.1 us a symbol); above, pointer doubling
    finds it in ``log2(count)`` numpy gathers over the bit positions, 1.7x
    faster at 1,024 symbols.
    """
    p = np.arange(total, dtype=np.int64)
    at = table[(win[p >> 3] >> (32 - lmax - (p & 7)).astype(np.uint32)) & ((1 << lmax) - 1)]
    if count > _HOPS_FROM:
        nxt = np.empty(total + 1, np.int64)  # the next code's start; `total` past the end
        np.add(p, at & 31, out=nxt[:total])
        nxt[total] = total
        np.minimum(nxt, total, out=nxt)
        chain = np.zeros(1, np.int64)
        while len(chain) < count:  # chain[i] = nxt applied i times to 0
            chain = np.concatenate([chain, nxt[chain]])
            if len(chain) < count:
                nxt = nxt[nxt]
        chain = chain[:count]
        if chain[-1] >= total:
            raise FormatError("Huffman stream ends inside a code")
        return at[chain]
    at = at.tolist()
    out = [0] * count
    pos = 0
    try:
        for i in range(count):
            out[i] = e = at[pos]
            pos += e & 31
    except IndexError:
        raise FormatError("Huffman stream ends inside a code") from None
    return np.asarray(out, np.uint32)


def _lockstep(win, table, lmax, count, lanes, k, starts, ends) -> np.ndarray:
    """Decodes all lanes together, one numpy step per symbol of a lane."""
    mask = np.uint32((1 << lmax) - 1)
    top = 32 - lmax
    out = np.empty((k, lanes), np.uint32)
    last = count - (lanes - 1) * k  # symbols in the last lane
    pos = starts.copy()
    try:
        for t in range(k):
            p = pos if t < last else pos[:-1]
            sh = (top - (p & 7)).astype(np.uint32)
            e = table[(win[p >> 3] >> sh) & mask]
            out[t, : len(p)] = e
            p += e & 31
    except IndexError:  # a lane ran past the payload
        raise FormatError("Huffman lanes do not end where their lengths say") from None
    if not np.array_equal(pos, ends):
        raise FormatError("Huffman lanes do not end where their lengths say")
    res = np.empty(count, np.uint32)
    full = res[: (lanes - 1) * k].reshape(lanes - 1, k)
    group = max(1, _PIECE // k)
    for g, h in chunks(lanes - 1, group):  # transposed a group of lanes at a time
        np.right_shift(out[:, g:h].T, 5, out=full[g:h])
    np.right_shift(out[:last, -1], 5, out=res[(lanes - 1) * k :])
    return res
