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


def old_writer_lanes(n, info_bits):
    """The lane count of the first rANS writer, before it was normalised."""
    return min(max(1, -(-n // _ans.MAX_STEPS), int(0.0035 * info_bits / 32)), n)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**8), st.floats(0.0, 17.0))
def test_lane_layout_is_readable_for_every_length(n, bits_per_symbol):
    info = bits_per_symbol * n
    lanes, steps = _ans.lane_layout(n, info)
    assert 1 <= lanes <= n and steps <= _ans.MAX_STEPS
    assert (steps - 1) * lanes < n <= steps * lanes
    assert _ans.check_layout(n, lanes) == steps
    # files of the old writer stay readable: its lanes give a valid layout too
    old = old_writer_lanes(n, info)
    old_steps = _ans.check_layout(n, old)
    assert (old_steps - 1) * old < n <= old_steps * old


@pytest.mark.parametrize("n", [5_244_085, 9_999_999])
def test_lane_layout_normalises_where_the_old_writer_did_not(n):
    info = 4.0 * n
    old = old_writer_lanes(n, info)
    steps = -(-n // old)
    assert -(-n // steps) != old  # the regime of the bug
    lanes, new_steps = _ans.lane_layout(n, info)
    assert new_steps == steps and lanes == -(-n // steps) < old


@pytest.mark.parametrize("count, lanes", [(10, 0), (10, 11), (10**8, 100)])
def test_check_layout_rejects_impossible_lanes(count, lanes):
    with pytest.raises(FormatError):
        _ans.check_layout(count, lanes)


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
    data = _ans.encode_lanes(sym, 32, 5, lanes)
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
