"""The hostile files measured against version 0.1 (issue 17), each written as a version-1 file.

Version-1 files are what 0.1 wrote and still reads, so each test here failed
there: the file got through (a broadcast bomb, wrapped indices, a path that
breaks ``jax.tree_util``), or a valid file could not be read back.
"""

import math
import tracemalloc
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jrm_craft import MAGIC, join, pack
from jrm_time import run_fast

from jaxrm import coding
from jaxrm.coding import FormatError
from jaxrm.quant import Codebook, QArray


def v1_file(leaves, sections):
    """A version-1 file: streams inline in the leaf records, one section each."""
    manifest = {"leaves": leaves, "sections": [{"length": len(s), "crc32": 0} for s in sections]}
    return join((MAGIC, 1, 0), manifest, b"".join(sections))


def raw(arr, section):
    arr = np.asarray(arr)
    return {"codec": "raw", "dtype": arr.dtype.name, "shape": list(arr.shape), "section": section}


def fixed(count, alphabet, section):
    return {"codec": "fixed", "count": count, "alphabet": alphabet, "section": section}


def qarray_file(shape, scale, zp, symbols=None):
    n = math.prod(shape)
    symbols = [1] * n if symbols is None else symbols
    secs = [np.asarray(scale, np.float32).tobytes(), np.asarray(zp, np.float32).tobytes(),
            pack(symbols, 1)]
    leaf = {"path": "q", "kind": "qarray", "shape": list(shape), "dtype": "float32", "bits": 8,
            "axis": None, "values_dtype": "int8", "offset": 0,
            "scale": raw(np.asarray(scale, np.float32), 0),
            "zero_point": raw(np.asarray(zp, np.float32), 1), "values": fixed(n, 2, 2)}
    return v1_file([leaf], secs)


def test_the_version_1_model_is_valid():
    out = coding.decode(qarray_file([2, 3], np.full((2, 1), 0.5), np.zeros((1, 1))))
    np.testing.assert_array_equal(out["q"], np.full((2, 3), 0.5))


def test_qarray_broadcast_bomb_is_refused():
    n = 1024  # 0.1 turned these 8 KB into an (n, n) array
    data = qarray_file([1, 1], np.ones((n, 1)), np.zeros((1, n)))
    with pytest.raises(FormatError, match="does not fit"):
        coding.decode(data)
    with pytest.raises(FormatError, match="does not fit"):
        coding.decode(qarray_file([64, 32], np.ones((7, 1, 1)), np.zeros((1, 1))))


def test_codebook_index_dtype_must_hold_the_codebook():
    def file(index_dtype, k):
        secs = [np.zeros(k, np.float32).tobytes(), pack([k - 1, 0, 1], 9)]
        leaf = {"path": "c", "kind": "codebook", "shape": [3], "dtype": "float32", "bits": 9,
                "index_dtype": index_dtype, "centroids": raw(np.zeros(k, np.float32), 0),
                "values": fixed(3, k, 1)}
        return v1_file([leaf], secs)

    coding.decode(file("uint16", 300))
    for dtype in ("uint8", "bool", "float16"):  # 0.1: symbol 299 wrapped to centroid 43
        with pytest.raises(FormatError):
            coding.decode(file(dtype, 300))


def test_deep_and_long_paths_are_refused():
    leaf = {"path": "/".join(["x"] * 1000), "kind": "raw", "shape": [1], "dtype": "float32",
            "data": raw(np.zeros(1, np.float32), 0)}
    with pytest.raises(FormatError, match="deeper"):
        coding.decode(v1_file([leaf], [np.zeros(1, np.float32).tobytes()]))
    with pytest.raises(ValueError, match="deeper"):
        coding.encode({"/".join(["x"] * 70): jnp.ones(1)})


def test_report_refuses_what_decode_refuses():
    # streams are checked by report too: a Huffman stream whose lanes are broken
    secs = [np.zeros(4, np.float32).tobytes(), bytes([2]) + (9).to_bytes(4, "little")
            + (1).to_bytes(4, "little") + bytes(6)]
    leaf = {"path": "c", "kind": "codebook", "shape": [3], "dtype": "float32", "bits": 2,
            "index_dtype": "uint8", "centroids": raw(np.zeros(4, np.float32), 0),
            "values": {"codec": "huffman", "count": 3, "alphabet": 4, "section": 1}}
    data = v1_file([leaf], secs)
    for fn in (coding.decode, coding.report):
        with pytest.raises(FormatError):
            fn(data)


def test_max_elements_is_checked_before_allocating():
    data = coding.encode({"w": jnp.zeros((1000, 1000))}, masks={"w": jnp.zeros((1000, 1000),
                                                                                bool)})
    assert len(data) < 300
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="max_elements"):
            coding.decode(data, max_elements=999_999)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    with pytest.raises(FormatError, match="max_elements"):
        coding.report(data, max_elements=10)
    assert coding.decode(data, max_elements=10**6 + 64)["w"].shape == (1000, 1000)
    with pytest.raises(TypeError):
        coding.decode(data, max_elements=1.5)


def _decode_peak(data):
    tracemalloc.start()
    try:
        out = coding.decode(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, peak


def test_working_memory_is_a_small_multiple_of_the_output():
    n = 1 << 22  # a constant 4M-entry codebook leaf and a fully pruned one: files of bytes
    cb = Codebook(jnp.zeros((n,), jnp.uint8), jnp.asarray([0.5, 1.0], jnp.float32), bits=1)
    data = coding.encode({"c": cb})
    assert len(data) < 300
    out, peak = _decode_peak(data)
    np.testing.assert_array_equal(out["c"], np.full(n, 0.5, np.float32))
    assert peak <= 3 * 4 * n  # 0.1 used ~27 bytes per element; 8 here (symbols + output)
    pruned = coding.encode({"w": jnp.ones(n)}, masks={"w": jnp.zeros(n, bool)})
    out, peak = _decode_peak(pruned)
    assert peak <= 2 * 4 * n + 2**20
    assert not np.asarray(out["w"]).any()


def test_decoding_compiles_nothing_per_leaf_shape():
    rng = np.random.default_rng(0)
    tree = {}
    for i in range(150):  # 0.1 compiled one dequantization per shape: 13.8 s here
        shape = (i + 1, 3)
        idx = rng.integers(0, 4, shape).astype(np.uint8)
        tree[f"c{i}"] = Codebook(idx, np.linspace(-1.0, 1.0, 4, dtype=np.float32), bits=2)
        tree[f"q{i}"] = QArray(idx.astype(np.int8), np.full((1, 1), 0.1, np.float32),
                               np.zeros((1, 1), np.float32), bits=4)
    data = coding.encode(tree)
    compiles = []

    def listener(event, duration, **kw):
        if "compile" in event:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        out = run_fast(lambda: coding.decode(data), 1500)  # about 5 s on a quiet core
    finally:
        from jax._src import monitoring

        monitoring.unregister_event_duration_listener(listener)
    assert not compiles
    for k in ("c7", "q149"):
        np.testing.assert_array_equal(out[k], tree[k].dequantize())


def test_a_big_sparse_leaf_that_encode_writes_decode_reads():
    n = 70_000_000  # 0.1: "would decode to more elements than the file can hold"
    mask = np.zeros(n, bool)
    mask[:: n // 70] = True
    w = np.arange(n // (n // 70) + 1, dtype=np.int8)
    leaf = np.zeros(n, np.int8)
    leaf[mask] = w[: int(mask.sum())]
    data = coding.encode({"w": leaf}, masks={"w": mask})
    assert len(data) < 5000
    out = coding.decode(data)["w"]
    np.testing.assert_array_equal(np.asarray(out)[mask], leaf[mask])
    assert not np.asarray(out)[~mask].any()
    assert coding.report(data).rows[0].kept == int(mask.sum())


@pytest.mark.slow
def test_a_constant_70m_qarray_reads_back():
    n = 70_000_000
    qa = QArray(jnp.full((n,), 3, jnp.int8), jnp.full((1,), 0.5), jnp.zeros((1,)), bits=8)
    data = coding.encode({"q": qa})
    assert len(data) < 600
    out = coding.decode(data)["q"]
    assert out.shape == (n,) and float(out[0]) == 1.5 and float(out[-1]) == 1.5


def test_a_zlib_manifest_may_not_inflate_without_bound():
    text = b'{"leaves": [], "sections": [], "pad": "' + b" " * (4 << 20) + b'"}'
    stored = zlib.compress(text, 9)
    head = MAGIC + (2).to_bytes(2, "little") + (1).to_bytes(2, "little")
    data = head + len(stored).to_bytes(4, "little") + zlib.crc32(stored).to_bytes(4, "little")
    with pytest.raises(FormatError, match="inflate"):
        coding.decode(data + stored)
