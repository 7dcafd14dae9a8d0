"""Hostile inputs to the MNIST readers: each is refused with DataError (a corrupt
cache is ignored with a warning), within a small memory bound, never crashing,
hanging, allocating what a header claims, or returning a wrong array."""

import pickle
import tracemalloc

import numpy as np
import pytest

from experiments import data, untrusted
from tests.experiments import _hostile_data as hostile

# Far below what any case claims (>= 512 MiB), far above what parsing needs.
PEAK_BYTES = 32 << 20
# A header may declare a real MNIST size (47 MB): reading stops one byte past it.
IDX_PEAK_BYTES = {"gzip bomb: 60000x28x28 header, 512 MiB inflated": 2 * 60000 * 28 * 28}


def _peak(fn):
    """Runs ``fn`` under tracemalloc (numpy reports its buffers to it); returns the peak."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("name", sorted(hostile.PICKLES))
def test_hostile_pickle_is_refused(name):
    blob = hostile.PICKLES[name]()

    def run():
        with pytest.raises(data.DataError, match="refused"):
            data.safe_unpickle(blob, name="crafted")

    assert _peak(run) < PEAK_BYTES


@pytest.mark.parametrize("name", sorted(hostile.IDX))
def test_hostile_idx_is_refused(name):
    blob = hostile.IDX[name]()

    def run():
        with pytest.raises(data.DataError, match="crafted"):
            data.parse_idx(blob, name="crafted")

    assert _peak(run) < IDX_PEAK_BYTES.get(name, PEAK_BYTES)


@pytest.mark.parametrize("name", sorted(hostile.CACHES))
def test_corrupt_cache_is_ignored_with_a_warning(tmp_path, monkeypatch, name):
    monkeypatch.delenv("JAXRM_DATA", raising=False)
    cache = tmp_path / "mnist.npz"
    cache.write_bytes(hostile.CACHES[name]())

    def run():
        with pytest.warns(RuntimeWarning, match="ignoring the corrupt MNIST cache"):
            with pytest.raises(FileNotFoundError, match="download=False"):
                data.load_mnist(cache=cache, download=False, quiet=True)

    assert _peak(run) < PEAK_BYTES


def test_pickle_array_budget_counts_every_array():
    # Two arrays that share one memoized buffer declare twice its bytes.
    raw = bytes(600)
    blob = hostile._p((hostile.array_with_state((600,), np.dtype("u1"), raw),
                       hostile.array_with_state((600,), np.dtype("u1"), raw)))
    assert len(data.safe_unpickle(blob, max_bytes=1200)) == 2
    with pytest.raises(data.DataError, match="more than"):
        data.safe_unpickle(blob, max_bytes=1199)


def test_python2_array_data_as_a_latin1_str_loads_as_numpy_reads_it():
    # Python 2 pickles (the MNIST wheel's) carry an array's bytes as a str once read
    # with encoding="latin1"; numpy encodes it back with latin1, and so does the reader.
    raw = bytes(range(256)) * 2
    blob = hostile._p(hostile.array_with_state((2, 256), np.dtype("u1"), raw.decode("latin1")))
    got = data.safe_unpickle(blob)
    np.testing.assert_array_equal(got, np.frombuffer(raw, np.uint8).reshape(2, 256))
    assert got.dtype == np.uint8


def test_legitimate_pickles_still_load():
    obj = {
        "big_endian": np.arange(5, dtype=">f8"),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "shared": [np.arange(3, dtype=np.uint8)] * 2,
        "nested": ((np.zeros((0, 3), np.float32), [True, None, 2.5, "s", b"b"]),),
        "bool": np.array([True, False]),
    }
    for protocol in (2, 3, 4, 5):
        got = data.safe_unpickle(pickle.dumps(obj, protocol=protocol))
        for k in ("big_endian", "fortran", "bool"):
            np.testing.assert_array_equal(got[k], obj[k])
            assert got[k].dtype == obj[k].dtype and got[k].shape == obj[k].shape
        assert got["big_endian"].dtype.str == ">f8"
        assert got["fortran"].flags.f_contiguous
        assert got["shared"][0] is got["shared"][1]  # memo references see the built array
        assert got["nested"][0][0].shape == (0, 3)
        assert got["nested"][0][1] == [True, None, 2.5, "s", b"b"]
    assert np.dtype("f8").str == "<f8"  # the shared builtin dtype was never modified


def test_idx_size_limit_is_the_header_and_the_cap():
    blob = hostile.idx_header((2, 3)) + bytes(6)
    # ndim 2 is not an MNIST layout; 1-D and 3-D are
    with pytest.raises(data.DataError, match="unsigned-byte"):
        data.parse_idx(blob)
    blob = hostile.idx_header((6,)) + bytes(range(6))
    np.testing.assert_array_equal(untrusted.parse_idx(blob, max_bytes=6), np.arange(6))
    with pytest.raises(data.DataError, match="limit"):
        untrusted.parse_idx(blob, max_bytes=5)
