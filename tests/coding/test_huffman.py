"""Canonical Huffman: optimal lengths, Kraft equality, prefix codes, round trips."""

import heapq
import itertools

import numpy as np
import pytest
from conftest import normal_symbols
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrm.coding import _huffman
from jaxrm.coding._bits import FormatError


def reference_cost(counts):
    """Minimum total code length: the sum of all merges of a heapq Huffman build."""
    heap = [int(c) for c in counts if c > 0]
    if len(heap) < 2:
        return 0
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


histograms = st.lists(st.integers(0, 10_000), min_size=2, max_size=64).filter(
    lambda c: sum(x > 0 for x in c) >= 2
)


@settings(max_examples=60, deadline=None)
@given(histograms)
def test_lengths_are_optimal_and_complete(counts):
    counts = np.asarray(counts)
    lengths = _huffman.code_lengths(counts)
    assert np.all((lengths > 0) == (counts > 0))
    assert int((counts * lengths).sum()) == reference_cost(counts)
    used = lengths[lengths > 0]
    assert sum(2.0 ** -int(x) for x in used) == 1.0  # Kraft equality


def test_length_limit_keeps_kraft_equality():
    counts = np.array([2**i for i in range(30)] + [1])  # optimal depth 30
    assert _huffman.code_lengths(counts, max_len=64).max() == 30
    lengths = _huffman.code_lengths(counts)
    assert lengths.max() == _huffman.MAX_LEN
    assert sum(2.0 ** -int(x) for x in lengths) == 1.0
    assert (counts * lengths).sum() >= reference_cost(counts)


@settings(max_examples=30, deadline=None)
@given(histograms)
def test_canonical_codes_are_prefix_free(counts):
    lengths = _huffman.code_lengths(np.asarray(counts))
    codes, _, _ = _huffman.canonical_codes(lengths)
    words = sorted(
        format(int(codes[s]), f"0{lengths[s]}b") for s in np.flatnonzero(lengths)
    )
    for a, b in itertools.pairwise(words):
        assert not b.startswith(a)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1, 5, 1000, 5000]),
    st.sampled_from([1, 2, 32, 300]),
    st.floats(0.1, 3.0),
)
def test_round_trip(seed, n, alphabet, spread):
    sym = normal_symbols(seed, n, alphabet, spread)
    width = max(1, (alphabet - 1).bit_length())
    data = _huffman.encode(sym, alphabet, width)
    np.testing.assert_array_equal(_huffman.decode(data, n, alphabet, width), sym)


def test_stream_size_is_the_huffman_cost_plus_small_headers():
    rng = np.random.default_rng(0)
    sym = np.clip(np.round(rng.normal(16, 4, 200_000)), 0, 31).astype(np.int64)
    counts = np.bincount(sym, minlength=32)
    data = _huffman.encode(sym, 32, 5)
    payload = reference_cost(counts) / 8
    assert payload <= len(data) <= payload * 1.006 + 64


def test_decoder_rejects_inconsistent_lanes():
    sym = np.arange(3000) % 7
    data = bytearray(_huffman.encode(sym, 8, 3))
    with pytest.raises(FormatError):
        _huffman.decode(bytes(data), 2999, 8, 3)
    with pytest.raises(FormatError):
        _huffman.decode(bytes(data[:-1]), 3000, 8, 3)


@pytest.mark.parametrize("n, alphabet", [(16_384, 32), (16_385, 32), (70_001, 300), (400_000, 5)])
def test_round_trip_over_many_lanes(n, alphabet):
    sym = normal_symbols(n, n, alphabet, 1.0).astype(np.uint16)
    width = (alphabet - 1).bit_length()
    data = _huffman.encode(sym, alphabet, width)
    out = _huffman.decode(data, n, alphabet, width)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, sym)


@pytest.mark.parametrize("n", [5000, 100_000])
def test_decoder_rejects_truncated_streams_and_wrong_counts(n):
    sym = normal_symbols(1, n, 32, 1.0)
    data = _huffman.encode(sym, 32, 5)
    for bad, count in [(data[:-1], n), (data[:-3], n), (data, n - 1), (data, n + 1)]:
        with pytest.raises(FormatError):
            _huffman.decode(bad, count, 32, 5)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**8), st.floats(0.01, 20.0))
def test_lane_layout_is_readable_for_every_length(n, bits_per_symbol):
    lanes, k = _huffman.lane_layout(n, max(1, int(bits_per_symbol * n)))
    assert 1 <= lanes <= n and k <= _huffman.MAX_STEPS
    assert -(-n // k) == lanes and -(-n // lanes) == k


def test_small_streams_have_small_headers():
    sym = normal_symbols(0, 1024, 32, 1.0)
    counts = np.bincount(sym, minlength=32)
    data = _huffman.encode(sym, 32, 5)
    # table (5 bits a length) + 15 bytes of lane header and padding
    assert len(data) <= reference_cost(counts) / 8 + 1 + 5 + 20 + 10 + 1


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1, 2, 30, 1000, 70_000]),
    st.sampled_from([2, 32, 300, 5000]),
    st.floats(0.02, 3.0),
)
def test_floor_bytes_bounds_the_section_from_below(seed, n, alphabet, spread):
    sym = normal_symbols(seed, n, alphabet, spread)
    width = (alphabet - 1).bit_length()
    counts = np.bincount(sym, minlength=alphabet)
    data = _huffman.encode(sym, alphabet, width)
    floor = _huffman.floor_bytes(counts, width)
    # all but the lane offsets: bit lengths of the lanes past the first, each below
    # k * MAX_LEN, minus their smallest
    total = int((counts * _huffman.code_lengths(counts)).sum())
    lanes, k = _huffman.lane_layout(n, total)
    offset_bits = (k * _huffman.MAX_LEN).bit_length()
    assert floor <= len(data) <= floor + -(-(lanes - 1) * offset_bits // 8)
