"""Interleaved rANS, vectorised over lanes with numpy.

Symbol ``i`` belongs to step ``i // P`` and lane ``i % P``; all ``P`` lanes
advance together, one numpy step per ``P`` symbols. Each lane is a 32-bit
rANS state in ``[2**16, 2**32)`` that emits 16-bit words; probabilities are
quantized to ``2**16``. The words are stored in the order the decoder reads
them, so decoding walks the stream forwards.

The cost over the empirical entropy is the probability quantization plus
about 32 bits per lane (its final state); the lane count is chosen so this
stays near 0.35% of the payload.

Section layout (little-endian)::

    u32  P lanes
    u8   table mode: 0 = dense (frequencies of symbols 0..A-1), 1 = sparse
    u32  A or m
    [sparse: m symbols, `width` bits each, byte padded]
    frequencies (dense: 0 for unused; sparse: f - 1), u16 each
    P final states, u32 each
    words, u16 each
"""

from __future__ import annotations

import numpy as np

from jaxrm.coding._bits import ByteReader, FormatError, pack_fixed, unpack_fixed

__all__ = ["MAX_STEPS", "PRECISION", "decode", "encode", "quantize"]

PRECISION = 16
_M = 1 << PRECISION
_L = 1 << 16  # lower bound of a lane's state
MAX_STEPS = 1 << 14  # bounds the decoder's Python loop
_LANE_BUDGET = 0.0035


def quantize(counts: np.ndarray) -> np.ndarray:
    """Frequencies summing to ``2**16``, at least 1 for every used symbol."""
    counts = np.asarray(counts, np.int64)
    used = counts > 0
    total = int(counts.sum())
    exact = counts * (_M / total)
    f = np.where(used, np.maximum(1, np.floor(exact)), 0).astype(np.int64)
    diff = _M - int(f.sum())
    if diff > 0:  # hand out the remainder by the largest rounding losses
        loss = np.where(used, exact - f, -np.inf)
        f[np.argsort(-loss, kind="stable")[:diff]] += 1
    while diff < 0:  # clipping at 1 overshot: take from the largest
        order = np.argsort(-f, kind="stable")
        take = order[f[order] > 1][: -diff]
        f[take] -= 1
        diff += len(take)
    return f


def _entropy_bits(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum()) if n else 0.0


def encode(sym: np.ndarray, alphabet: int, width: int) -> bytes:
    """rANS-codes ``sym`` (integers in ``[0, alphabet)``) into a section."""
    sym = np.asarray(sym, np.int64).reshape(-1)
    n = len(sym)
    counts = np.bincount(sym, minlength=alphabet)
    if len(np.flatnonzero(counts)) > _M // 2:
        raise ValueError("too many distinct symbols for rANS")
    info = _entropy_bits(counts)
    lanes = max(1, -(-n // MAX_STEPS), int(_LANE_BUDGET * info / 32)) if n else 1
    lanes = min(lanes, max(n, 1))
    steps = -(-n // lanes)
    freq = quantize(counts) if n else np.zeros(alphabet, np.int64)
    cum = np.concatenate([[0], np.cumsum(freq)[:-1]]).astype(np.uint64)
    padded = np.zeros(steps * lanes, np.int64)
    padded[:n] = sym
    padded = padded.reshape(steps, lanes)
    # per-symbol quantities gathered once for all steps; states fit uint32
    # flush while x >= f << 16, i.e. x > (f << 16) - 1, which fits uint32
    xtop_t = ((freq << (32 - PRECISION)) - 1).clip(0).astype(np.uint32)[padded]
    f_t = freq.astype(np.uint32)[padded]
    cum_t = cum.astype(np.uint32)[padded]
    x = np.full(lanes, _L, np.uint32)
    before = np.empty((steps, lanes), np.uint32)
    last = n - (steps - 1) * lanes
    sixteen = np.uint32(16)
    for t in range(steps - 1, -1, -1):
        k = lanes if t < steps - 1 else last
        xs = x[:k]
        before[t, :k] = xs
        np.right_shift(xs, sixteen, out=xs, where=xs > xtop_t[t, :k])
        q, rem = np.divmod(xs, f_t[t, :k])
        x[:k] = (q << sixteen) + rem + cum_t[t, :k]
    flush = before > xtop_t
    if last < lanes:
        flush[-1, last:] = False
    used = np.flatnonzero(freq)
    a = int(used[-1]) + 1 if len(used) else 0
    # a dense table holds frequencies below 2**16, so a lone symbol goes sparse
    if len(used) > 1 and a * 16 <= len(used) * (width + 16):
        table = b"\x00" + a.to_bytes(4, "little") + freq[:a].astype("<u2").tobytes()
    else:
        table = (
            b"\x01"
            + len(used).to_bytes(4, "little")
            + pack_fixed(used, width)
            + (freq[used] - 1).astype("<u2").tobytes()
        )
    return (
        lanes.to_bytes(4, "little")
        + table
        + x.astype("<u4").tobytes()
        + (before[flush] & 0xFFFF).astype("<u2").tobytes()
    )


def decode(data: bytes | memoryview, count: int, alphabet: int, width: int) -> np.ndarray:
    """Decodes ``count`` symbols from a section made by [`encode`][jaxrm.coding.encode]."""
    r = ByteReader(data)
    lanes = r.uint(4)
    mode = r.uint(1)
    m = r.uint(4)
    if lanes < 1 or lanes > max(count, 1) or m > alphabet:
        raise FormatError("bad rANS header")
    freq = np.zeros(alphabet, np.int64)
    if mode == 0:
        freq[:m] = np.frombuffer(r.take(2 * m), "<u2")
    elif mode == 1:
        syms = unpack_fixed(r.take(-(-m * width // 8)), m, width).astype(np.int64)
        f = np.frombuffer(r.take(2 * m), "<u2").astype(np.int64) + 1
        if m and (np.any(np.diff(syms) <= 0) or syms[-1] >= alphabet):
            raise FormatError("rANS table symbols are not increasing and in range")
        freq[syms] = f
    else:
        raise FormatError(f"unknown rANS table mode {mode}")
    state = np.frombuffer(r.take(4 * lanes), "<u4").astype(np.uint64)
    rest = r.take(r.remaining())
    if len(rest) % 2:
        raise FormatError("rANS word stream has an odd length")
    stream = np.frombuffer(rest, "<u2").astype(np.uint64)
    if count == 0:
        if freq.any() or len(stream) or lanes != 1 or state[0] != _L:
            raise FormatError("empty rANS stream with content")
        return np.zeros(0, np.uint32)
    if int(freq.sum()) != _M:
        raise FormatError("rANS frequencies do not sum to 2**16")
    steps = -(-count // lanes)
    if steps > MAX_STEPS or -(-count // steps) != lanes:
        raise FormatError("rANS lanes do not split the symbol count")
    if np.any(state < _L):
        raise FormatError("rANS state below its lower bound")
    used = np.flatnonzero(freq)
    slot_sym = np.repeat(used, freq[used])
    cum = np.concatenate([[0], np.cumsum(freq)[:-1]])
    slot = np.arange(_M)
    # x -> f[s] * (x >> 16) + (slot - cum[s]) with s the symbol owning the slot
    mul = freq[slot_sym].astype(np.uint32)
    add = (slot - cum[slot_sym]).astype(np.uint32)
    # every state stays below 2**32: f * (x >> 16) + (slot - cum) < f * 2**16
    state = state.astype(np.uint32)
    stream = stream.astype(np.uint32)
    out = np.empty((steps, lanes), np.uint32)
    last = count - (steps - 1) * lanes
    ptr = 0
    low = np.uint32(_M - 1)
    sixteen = np.uint32(16)
    bound = np.uint32(_L)
    for t in range(steps):
        k = lanes if t < steps - 1 else last
        xs = state[:k]
        sl = np.bitwise_and(xs, low, out=out[t, :k])
        xs = mul[sl] * (xs >> sixteen) + add[sl]
        need = xs < bound
        c = int(np.count_nonzero(need))
        if c:
            if ptr + c > len(stream):
                raise FormatError("rANS word stream ends early")
            xs[need] = (xs[need] << sixteen) | stream[ptr : ptr + c]
            ptr += c
        state[:k] = xs
    if ptr != len(stream) or np.any(state != _L):
        raise FormatError("rANS stream does not end in its initial state")
    return slot_sym[out.reshape(-1)[:count]].astype(np.uint32)
