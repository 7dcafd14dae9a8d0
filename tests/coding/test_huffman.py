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
