"""Interleaved rANS: round trips, quantized frequencies, closeness to the entropy."""

import bisect
import hashlib
import itertools

import numpy as np
import pytest
from conftest import normal_symbols
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrm.coding import _ans, _ans_lanes, _freq, _huffman, _streams
from jaxrm.coding._bits import FormatError


def entropy_bytes(sym):
    c = np.bincount(sym).astype(float)
    c = c[c > 0]
    return float(-(c * np.log2(c / c.sum())).sum()) / 8


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1, 7, 1000, 20_000]),
    st.sampled_from([1, 2, 32, 300]),
    st.floats(0.05, 3.0),
)
def test_round_trip(seed, n, alphabet, spread):
    sym = normal_symbols(seed, n, alphabet, spread)
    width = max(1, (alphabet - 1).bit_length())
    data = _ans.encode(sym, alphabet, width)
    np.testing.assert_array_equal(_ans.decode(data, n, alphabet, width), sym)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=300).filter(any))
def test_quantized_frequencies_sum_and_cover(counts):
    f = _freq.quantize(np.asarray(counts), 16)
    assert f.sum() == 1 << 16
    assert np.all((f > 0) == (np.asarray(counts) > 0))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 10**6), min_size=1, max_size=64),
    st.integers(0, 8),
)
def test_python_int_quantization_is_the_numpy_one(counts, extra):
    # from barely enough slots (clipping at 1 overshoots) to many per symbol
    p = max(1, (len(counts) - 1).bit_length()) + extra
    want = _freq.quantize(np.asarray(counts), p, positive=True)
    assert _freq.quantize_list(counts, p) == want.tolist()
    assert _freq.quantize_list(counts, p) == _freq.quantize(np.asarray(counts), p).tolist()


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_within_half_a_percent_of_the_entropy(scale):
    rng = np.random.default_rng(1)
    w = rng.normal(size=400_000)
    sym = np.clip(np.round(w / scale * 3 + 16), 0, 31).astype(np.int64)
    data = _ans.encode(sym, 32, 5)
    assert len(data) <= entropy_bytes(sym) * 1.005
    np.testing.assert_array_equal(_ans.decode(data, len(sym), 32, 5), sym)


def test_decoder_checks_final_state():
    sym = np.arange(5000) % 5
    data = bytearray(_ans.encode(sym, 8, 3))
    data[-1] ^= 0x5A
    with pytest.raises(FormatError):
        _ans.decode(bytes(data), 5000, 8, 3)


def old_writer_lanes(n, info_bits):
    """The lane count of the first rANS writer, before it was normalised."""
    return min(max(1, -(-n // _ans_lanes.MAX_STEPS), int(0.0035 * info_bits / 32)), n)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**8), st.floats(0.0, 17.0))
def test_lane_layout_is_readable_for_every_length(n, bits_per_symbol):
    info = bits_per_symbol * n
    lanes, steps = _ans_lanes.lane_layout(n, info)
    assert 1 <= lanes <= n and steps <= _ans_lanes.MAX_STEPS
    assert (steps - 1) * lanes < n <= steps * lanes
    assert _ans_lanes.check_layout(n, lanes) == steps
    # files of the old writer stay readable: its lanes give a valid layout too
    old = old_writer_lanes(n, info)
    old_steps = _ans_lanes.check_layout(n, old)
    assert (old_steps - 1) * old < n <= old_steps * old


@pytest.mark.parametrize("n", [5_244_085, 9_999_999])
def test_lane_layout_normalises_where_the_old_writer_did_not(n):
    info = 4.0 * n
    old = old_writer_lanes(n, info)
    steps = -(-n // old)
    assert -(-n // steps) != old  # the regime of the bug
    lanes, new_steps = _ans_lanes.lane_layout(n, info)
    assert new_steps == steps and lanes == -(-n // steps) < old


@pytest.mark.parametrize("count, lanes", [(10, 0), (10, 11), (10**8, 100)])
def test_check_layout_rejects_impossible_lanes(count, lanes):
    with pytest.raises(FormatError):
        _ans_lanes.check_layout(count, lanes)


@pytest.mark.slow
@pytest.mark.parametrize("n", [10_000_000, 40_000_000])
def test_round_trip_at_scale(n):
    sym = normal_symbols(n, n, 32, 1.0).astype(np.uint8)
    data = _ans.encode(sym, 32, 5)
    assert len(data) <= entropy_bytes(sym) * 1.005
    np.testing.assert_array_equal(_ans.decode(data, n, 32, 5), sym)


@pytest.mark.slow
def test_reads_streams_of_the_old_writer():
    # the old writer's lanes for ~4.3 bits a symbol, at a length where they
    # were not normalised (a layout the old decoder refused)
    n = next(
        n for n in range(10_000_000, 9_000_000, -1)
        if -(-n // -(-n // old_writer_lanes(n, 4.3 * n))) != old_writer_lanes(n, 4.3 * n)
    )
    lanes = old_writer_lanes(n, 4.3 * n)
    sym = normal_symbols(3, n, 32, 1.0).astype(np.uint8)
    data = _ans_lanes.encode_lanes(sym, 32, 5, lanes)
    np.testing.assert_array_equal(_ans.decode(data, n, 32, 5), sym)


@pytest.mark.slow
def test_kmeans_leaf_of_16m_weights_reads_back():
    import jax
    import jax.numpy as jnp

    from jaxrm import coding, quant

    # Laplace weights: ~4.33 bits a symbol, where the old writer's lanes for
    # 2**24 symbols were not normalised and the file did not read back
    w = jax.random.laplace(jax.random.key(0), (4096, 4096), jnp.float32)
    tree = quant.kmeans({"w": w}, 5)
    n = w.size
    old = old_writer_lanes(n, entropy_bytes(np.asarray(tree["w"].indices).reshape(-1)) * 8)
    assert -(-n // -(-n // old)) != old
    out = coding.decode(coding.encode(tree, entropy="ans"))
    np.testing.assert_array_equal(out["w"], np.asarray(quant.dequantize(tree)["w"]))


def read_bits(data, pos, count, width):
    """``count`` MSB-first integers of ``width`` bits from ``data[pos:]``; new pos."""
    nbytes = -(-count * width // 8)
    big = int.from_bytes(data[pos : pos + nbytes], "big") >> (nbytes * 8 - count * width)
    vals = [(big >> (width * (count - 1 - i))) & ((1 << width) - 1) for i in range(count)]
    return vals, pos + nbytes


def reference_table(data, width):
    """The used symbols, precision, frequencies and the words' offset of a section."""
    assert data[:4] == b"\x00\x00\x00\x00"
    mode, pos = data[4], 5
    x = shift = 0
    while True:
        b = data[pos]
        pos += 1
        x |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    if mode == 0:
        bits, pos = read_bits(data, pos, x, 1)
        used = [i for i, b in enumerate(bits) if b]
    else:
        used, pos = read_bits(data, pos, x, width)
    p, w = data[pos], data[pos + 1]
    freq, pos = read_bits(data, pos + 2, len(used), w)
    return used, p, [v + 1 for v in freq], pos


def reference_decode(data, count, width):
    """A rANS decoder written from the section's definition alone (no jaxrm, no library).

    State: 64 bits; words: 32 bits, read from the end of the word list (a
    stack); frequencies scaled to 2**24; the stream starts from its last one
    or two words and ends in state 0 with no word left.
    """
    used, p, freq, pos = reference_table(data, width)
    f = [v << (24 - p) for v in freq]
    cum = [0, *itertools.accumulate(f)]
    assert cum[-1] == 1 << 24
    words = [int(v) for v in np.frombuffer(data[pos:], "<u4")]
    state = words.pop()
    if words:
        state = (state << 32) | words.pop()
    out = []
    for _ in range(count):
        q = state & ((1 << 24) - 1)
        s = bisect.bisect_right(cum, q) - 1
        state = (state >> 24) * f[s] + q - cum[s]
        if state < 1 << 32 and words:
            state = (state << 32) | words.pop()
        out.append(used[s])
    assert state == 0 and not words
    return np.asarray(out)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([2, 30, 700, 3000]),
    st.sampled_from([2, 32, 300, 70_000]),
    st.floats(0.05, 3.0),
)
def test_sections_follow_their_definition(seed, n, alphabet, spread):
    sym = normal_symbols(seed, n, alphabet, spread)
    if len(np.unique(sym)) < 2:
        sym[0] = 1 - sym[-1] if sym[-1] < 2 else 0
    width = (alphabet - 1).bit_length()
    data = _ans.encode(sym, alphabet, width)
    np.testing.assert_array_equal(reference_decode(data, n, width), sym)


@pytest.mark.parametrize("lanes", [1, 7, 300])
def test_reads_the_lane_layout(lanes):
    sym = normal_symbols(5, 4000, 32, 1.0)
    data = _ans_lanes.encode_lanes(sym, 32, 5, lanes)
    np.testing.assert_array_equal(_ans.decode(data, 4000, 32, 5), sym)


def test_small_streams_have_small_headers():
    sym = normal_symbols(0, 1024, 32, 1.0)
    data = _ans.encode(sym, 32, 5)
    # the payload within a word or two of the entropy; the table about 5 bytes a symbol used
    used = len(np.unique(sym))
    assert len(data) <= entropy_bytes(sym) * 1.01 + 8 + 8 + used * 11 / 8 + 4
    assert len(_ans.encode(np.full(1000, 3), 8, 3)) <= 8
    assert len(_ans.encode(np.zeros(0, np.int64), 8, 3)) <= 8


@pytest.mark.parametrize("n", [1000, (1 << 20) + 5])  # one piece, and pieces
@pytest.mark.parametrize("low, high", [(0, 9), (3, 9), (3, 31)])
def test_symbols_in_one_run_above_zero_round_trip(n, low, high):
    # used symbols low..high: ranks are the symbols minus low (no rank table)
    sym = np.random.default_rng(n).integers(low, high + 1, n)
    data = _ans.encode(sym, 32, 5)
    np.testing.assert_array_equal(reference_decode(data, n, 5) if n < 5000 else sym, sym)
    np.testing.assert_array_equal(_ans.decode(data, n, 32, 5), sym)


@pytest.mark.parametrize("cut", [-1, -4, 4])
def test_decoder_rejects_truncated_or_extended_streams(cut):
    sym = normal_symbols(2, 20_000, 32, 1.0)
    data = _ans.encode(sym, 32, 5)
    bad = data[:cut] if cut < 0 else data + b"\x01\x00\x00\x00"
    with pytest.raises(FormatError):
        _ans.decode(bad, 20_000, 32, 5)
    with pytest.raises(FormatError):
        _ans.decode(data, 19_999, 32, 5)


@pytest.mark.parametrize(
    "seed, n, alphabet, spread, digest",
    [
        (0, 1024, 32, 1.0, "9624bd19d8d3ec51"),  # every symbol used: ranks are symbols
        (5, 1024, 64, 0.3, "8f17195b93749766"),  # a small table with gaps: bitmap
        (1, 5000, 300, 1.0, "48032380faf9e19f"),  # more symbols than the Python-int tables take
        (2, 3000, 70000, 0.05, "c08c6c5692dcb8e1"),
        (6, 200, 1 << 20, 0.001, "bdeef07852c55a21"),  # sparse symbols: listed, not a bitmap
        (3, 1000, 8, 0.01, "e1af5dd48654caf7"),  # one symbol
        (4, 0, 8, 1.0, "588611f65741c171"),  # none
    ],
)
def test_sections_are_byte_identical_to_the_earlier_writer(seed, n, alphabet, spread, digest):
    # Digests of the bytes the writer made before its small-table fast paths:
    # the format, and the frequencies chosen for a histogram, are unchanged.
    sym = normal_symbols(seed, n, alphabet, spread)
    data = _ans.encode(sym, alphabet, (alphabet - 1).bit_length())
    assert hashlib.sha256(data).hexdigest()[:16] == digest
    np.testing.assert_array_equal(_ans.decode(data, n, alphabet, (alphabet - 1).bit_length()), sym)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([1, 3, 40, 2000]),
    st.sampled_from([2, 32, 300]),
    st.floats(0.02, 3.0),
)
def test_ans_streams_keep_the_smaller_coder(seed, n, alphabet, spread):
    # Huffman is coded only where its size bounded from the histogram could win;
    # the choice is the one coding both would make (Huffman on a tie).
    sym = normal_symbols(seed, n, alphabet, spread)
    width = (alphabet - 1).bit_length()
    rans = _ans.encode(sym, alphabet, width)
    huff = _huffman.encode(sym, alphabet, width)
    data, meta = _streams.encode(sym, alphabet, "ans")
    assert (data, meta["codec"]) == ((huff, "huffman") if len(huff) <= len(rans) else (rans, "ans"))


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1, 40, 2000]),
    st.sampled_from([1, 2, 32, 300, 1 << 18]),
    st.sampled_from(["fixed", "huffman", "ans"]),
)
def test_stream_floor_bounds_the_section_from_below(seed, n, alphabet, codec):
    sym = normal_symbols(seed, n, alphabet, 1.0)
    data, meta = _streams.encode(sym, alphabet, codec)
    floor = _streams.floor_bytes(sym, alphabet, codec)
    assert floor <= len(data)
    if meta["codec"] == "fixed":
        assert floor == len(data)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.sampled_from(["huffman", "ans"]))
def test_estimates_of_many_streams_are_the_estimates_of_each(seed, rows, codec):
    rng = np.random.default_rng(seed)
    alphabets = rng.integers(1, 300, rows).tolist()
    top = max(alphabets)
    hists = np.zeros((rows, top), np.int64)
    for i, a in enumerate(alphabets):  # some empty, some one symbol, some spread
        n = int(rng.choice([0, 1, 50, 5000]))
        hists[i] = np.bincount(normal_symbols(seed + i, n, a, float(rng.uniform(0.02, 3))),
                               minlength=top)
    want = [_streams.estimate_bits(h[:a], codec) for h, a in zip(hists, alphabets)]
    np.testing.assert_allclose(_streams.estimate_rows(hists, alphabets, codec), want, rtol=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 15), st.sampled_from([2, 5, 32, 64]),
       st.floats(0.02, 3.0))
def test_stored_frequencies_are_the_quantized_histogram(seed, log_n, alphabet, spread):
    # lengths of powers of two take exact shares without the rounding pass
    for n in (1 << log_n, (1 << log_n) + 3):
        sym = normal_symbols(seed, n, alphabet, spread)
        counts = np.bincount(sym, minlength=alphabet)
        if np.count_nonzero(counts) < 2:
            continue
        width = (alphabet - 1).bit_length()
        used, p, freq, _ = reference_table(_ans.encode(sym, alphabet, width), width)
        assert used == counts.nonzero()[0].tolist()
        assert p == _ans.precision_for(n, len(used))
        assert freq == _freq.quantize(counts, p)[used].tolist()
