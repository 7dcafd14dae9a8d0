"""Interleaved rANS: round trips, quantized frequencies, closeness to the entropy."""

import numpy as np
import pytest
from conftest import normal_symbols
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrm.coding import _ans
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
    f = _ans.quantize(np.asarray(counts))
    assert f.sum() == 1 << _ans.PRECISION
    assert np.all((f > 0) == (np.asarray(counts) > 0))


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
