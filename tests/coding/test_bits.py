"""Bit helpers: fixed-width packing against a bit-string reference, LEB128, histograms."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrm.coding import _bits
from jaxrm.coding._bits import ByteReader, FormatError


def reference_pack(values, width):
    bits = "".join(format(int(v), f"0{width}b") for v in values)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 32), st.sampled_from([0, 1, 3, 63, 64, 65, 1000]), st.integers(0, 2**32))
def test_fixed_width_packing_matches_a_bit_string(width, count, seed):
    vals = np.random.default_rng(seed).integers(0, 1 << width, count, dtype=np.uint64)
    data = _bits.pack_fixed(vals, width)
    assert data == reference_pack(vals, width)
    np.testing.assert_array_equal(_bits.unpack_fixed(data, count, width), vals)
    if count <= _bits.SMALL:  # the Python-int paths of short tables
        assert _bits.pack_list(vals.tolist(), width) == data
        plus_one = [v + 1 for v in vals.tolist()]
        assert _bits.pack_list(plus_one, width, minus=1) == data


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**62))
def test_varint_round_trip(x):
    data = _bits.varint(x) + b"\xff"
    r = ByteReader(data)
    assert r.varint(2**62) == x
    assert r.remaining() == 1
    assert len(data) - 1 == max(1, -(-x.bit_length() // 7))


def test_varint_refuses_values_above_the_limit():
    with pytest.raises(FormatError):
        ByteReader(_bits.varint(1000)).varint(999)
    with pytest.raises(FormatError):
        ByteReader(b"\x80\x80").varint(10)


@pytest.mark.parametrize("n", [0, 5, (1 << 20) + 3])
def test_histogram_is_bincount(n):
    sym = np.random.default_rng(n).integers(0, 300, n).astype(np.uint16)
    np.testing.assert_array_equal(_bits.histogram(sym, 300), np.bincount(sym, minlength=300))
