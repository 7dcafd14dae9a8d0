"""Hostile .jrm files with valid CRC32s, crafted from the format model, by category.

``base_files()`` gives one valid file per leaf kind and stream codec (the
tests check that they decode); ``cases()`` yields ``(category, name, bytes)``
for files that are wrong on purpose, each of which must be refused with a
``FormatError``. Every manifest field and every stream kind is covered.
"""

import copy
import json
import zlib

import numpy as np
from jrm_craft import MAGIC, Craft, ans_payload, huffman_payload, join, pack, raw_manifest

F32 = np.float32


def _huffman_valid():
    """Symbols [0, 1, 2, 3, 0, 0] with code lengths [1, 2, 3, 3] (codes 0, 10, 110, 111)."""
    bits = "0" + "10" + "110" + "111" + "0" + "0"
    pad = -len(bits) % 8
    codes = int(bits + "0" * pad, 2).to_bytes((len(bits) + pad) // 8, "big")
    table = (4).to_bytes(4, "little") + pack([1, 2, 3, 3], 5)
    return huffman_payload(0, table, pad=pad, codes=codes)


def _ans_single(symbol=2, width=2, lanes=1, state=1 << 16):
    """rANS of one symbol with frequency 2**16: states never move, no words."""
    table = pack([symbol], width) + (0xFFFF).to_bytes(2, "little")
    return ans_payload(lanes, 1, 1, table, [state] * lanes)


def codebook(codec="fixed", payload=None, count=6):
    c = Craft()
    if codec == "fixed":
        values = c.fixed([0, 1, 2, 3, 0, 0], 4)
    else:
        j = c.stream(codec, payload, count, 4)
        values = c.run(j, count, 4)
    c.leaf(path="cb/kernel", kind="codebook", shape=[2, 3], dtype="float32", bits=2,
           index_dtype="uint8", centroids=c.raw(np.array([-1.0, -0.5, 0.5, 1.0], F32)),
           values=values)
    return c


def sparse_codebook():
    # kept entries at 0 and 9 of 12 with 2-bit indices: codes 0, 3, 3, 0 (fillers at 4, 8)
    c = Craft()
    c.leaf(path="sp", kind="codebook", shape=[12], dtype="float32", bits=2, index_dtype="uint8",
           centroids=c.raw(np.array([-1.0, 0.25, 0.5, 1.0], F32)),
           index=c.fixed([0, 3, 3, 0], 4), index_bits=2, kept=2,
           values=c.fixed([1, 4, 4, 3], 5), filler=4)
    return c


def qarray():
    c = Craft()
    c.leaf(path="q", kind="qarray", shape=[2, 3], dtype="float32", bits=4, axis=0,
           values_dtype="int8", offset=-2, scale=c.raw(np.array([[0.5], [0.25]], F32)),
           zero_point=c.raw(np.zeros((2, 1), F32)), values=c.fixed([0, 1, 2, 3, 3, 2], 4))
    return c


def sparse_float():
    # kept entries at 1 and 5 of 10: gaps 2 and 4, 2-bit codes 1 and 3
    c = Craft()
    c.leaf(path="w", kind="sparse", shape=[10], dtype="float32", index=c.fixed([1, 3], 4),
           index_bits=2, kept=2, values=c.raw(np.array([1.5, -2.0], F32)))
    return c


def raw_leaf():
    c = Craft()
    c.leaf(path="b", kind="raw", shape=[3], dtype="float32", data=c.raw(np.arange(3, dtype=F32)))
    return c


def shared():
    """Two leaves in one fixed stream and two raw arrays in one section."""
    c = Craft()
    body = np.array([1.0, 2.0], F32).tobytes() + np.array([-1.0, 1.0], F32).tobytes()
    sec = c.section(body)
    j = c.stream("fixed", pack([0, 1, 1, 0, 1], 1), 5, 2)
    c.leaf(path="a", kind="raw", shape=[2], dtype="float32",
           data=c.raw(np.zeros(2, F32), section=sec, offset=0))
    c.leaf(path="c1", kind="codebook", shape=[2], dtype="float32", bits=1, index_dtype="uint8",
           centroids=c.raw(np.zeros(2, F32), section=sec, offset=8), values=c.run(j, 2, 2))
    c.leaf(path="c2", kind="codebook", shape=[3], dtype="float32", bits=1, index_dtype="uint8",
           centroids=c.raw(np.array([-1.0, 1.0], F32)), values=c.run(j, 3, 2, start=2))
    return c


BASES = {
    "codebook-fixed": lambda: codebook(),
    "codebook-huffman": lambda: codebook("huffman", _huffman_valid()),
    "codebook-ans": lambda: codebook("ans", _ans_single(), 6),
    "codebook-sparse": sparse_codebook,
    "qarray": qarray,
    "sparse": sparse_float,
    "raw": raw_leaf,
    "shared": shared,
}


def base_files():
    return {name: make().build() for name, make in BASES.items()}


def _edit(make, change, compress=False, crc_change=False):
    """A valid file of ``make`` with ``change`` applied to its manifest, CRCs recomputed."""
    c = make()
    m = c.manifest()
    if crc_change:
        c.build(m)  # fills in the right CRCs, which ``change`` then spoils
    change(m)
    return c.build(m, compress=compress, fix_crcs=not crc_change)


def _leaf0(m):
    return m["leaves"][0]


def _set(path, value):
    """A change setting ``m[path...] = value`` (path of keys and indices from the root)."""

    def change(m):
        node = m
        for k in path[:-1]:
            node = node[k(m) if callable(k) else k]
        node[path[-1]] = value

    return change


HOSTILE_DTYPES = ["object", "V8", "<U10", "|O", "float128", "complex64", "", 5, None, "int4"]
HUGE = [-1, 2**31, 2**63, 2**64 + 1, 10**30, 1.5, True, "3", None, [], {}]


def cases():
    """Yields (category, name, data) of hostile files; every one must be refused."""
    yield from _header_cases()
    yield from _section_cases()
    yield from _stream_cases()
    yield from _leaf_cases()
    yield from _sparse_cases()
    yield from _codebook_cases()
    yield from _qarray_cases()
    yield from _huffman_cases()
    yield from _ans_cases()


def _header_cases():
    good = codebook().build()
    body = b""
    m = codebook().manifest()
    yield "header", "magic", join((b"\x89JRX\r\n\x1a\n", 2, 0), copy.deepcopy(m), codebook_body())
    for v in (0, 3, 0xFFFF):
        yield "header", f"version {v}", join((MAGIC, v, 0), copy.deepcopy(m), codebook_body())
    for f in (2, 0x8000):
        yield "header", f"flags {f}", join((MAGIC, 2, f), copy.deepcopy(m), codebook_body())
    yield "header", "v1 with flags", join((MAGIC, 1, 0), m, codebook_body(), compress=True)
    past_end = good[:12] + (2**31).to_bytes(4, "little") + good[16:]
    yield "header", "manifest length past end", past_end
    for text in [b"[" * 100_000 + b"]" * 100_000, b"NaN", b'{"leaves": 1' + b"0" * 5000 + b"}",
                 b"\xff\xfe{}", b"{}", b"[]", b'{"leaves": [], "sections": [], "x": Infinity}',
                 b'{"leaves": [], "sections": {}}', b'{"leaves": {}, "sections": []}']:
        yield "header", f"manifest text {text[:12]!r}", raw_manifest(text, body)
    bomb = zlib.compress(b" " * (8 << 20), 9)  # 8 MiB of spaces in ~8 KB
    yield "header", "manifest zlib bomb", _zlib_file(bomb)
    yield "header", "manifest bad zlib", _zlib_file(b"\x78\x9c" + b"\x00" * 40)
    yield "header", "manifest zlib trailing", _zlib_file(zlib.compress(b"{}") + b"junk")
    cut = zlib.compress(json.dumps(m).encode())[:-4]
    yield "header", "manifest zlib truncated", _zlib_file(cut)
    yield "header", "empty", b""
    yield "header", "short", good[:19]


def codebook_body():
    return b"".join(codebook().sections)


def _zlib_file(stored):
    head = (MAGIC + (2).to_bytes(2, "little") + (1).to_bytes(2, "little")
            + len(stored).to_bytes(4, "little") + zlib.crc32(stored).to_bytes(4, "little"))
    return head + stored


def _section_cases():
    for v in HUGE:
        yield "sections", f"length {v!r}", _edit(codebook, _set(["sections", 0, "length"], v))
        yield "sections", f"crc {v!r}", _edit(codebook, _set(["sections", 0, "crc32"], v),
                                              crc_change=True)
    yield "sections", "missing", _edit(codebook, lambda m: m.pop("sections"))
    yield "sections", "not a list", _edit(codebook, _set(["sections"], {"0": 1}))
    yield "sections", "entry not an object", _edit(codebook, _set(["sections", 0], 7))
    yield "sections", "extra unused", _edit_body(codebook, lambda m: m["sections"].append(
        {"length": 4, "crc32": 0}), b"\x00" * 4)
    yield "sections", "trailing bytes", codebook().build() + b"\x00"
    yield "sections", "one too long", _edit(codebook, lambda m: m["sections"][0].update(
        length=m["sections"][0]["length"] + 1))
    overlap = _set(["leaves", 1, "centroids", "offset"], 4)
    yield "sections", "raw overlaps raw", _edit(shared, overlap)
    yield "sections", "raw leaves a gap", _edit(shared, _set(["leaves", 0, "data", "offset"], 1))
    for v in [-1, 2**40, True, "0"]:
        yield "sections", f"raw offset {v!r}", _edit(shared, _set(["leaves", 1, "centroids",
                                                                    "offset"], v))
    yield "sections", "raw in a stream's section", _edit(
        codebook, lambda m: _leaf0(m)["centroids"].update(section=m["streams"][0]["section"]))
    yield "sections", "two streams share a section", _edit(
        shared, lambda m: m["streams"].append(dict(m["streams"][0])))


def _edit_body(make, change, extra):
    c = make()
    m = c.manifest()
    change(m)
    return join((MAGIC, 2, 0), m, b"".join(c.sections) + extra)


def _stream_cases():
    for field in ("count", "alphabet", "section"):
        for v in HUGE:
            yield "streams", f"{field} {v!r}", _edit(codebook, _set(["streams", 0, field], v))
    for codec in ("pickle", "raw", "", None, 3, "FIXED"):
        yield "streams", f"codec {codec!r}", _edit(codebook, _set(["streams", 0, "codec"], codec))
    yield "streams", "not a list", _edit(codebook, _set(["streams"], {}))
    yield "streams", "entry not an object", _edit(codebook, _set(["streams", 0], []))
    yield "streams", "in version 1", codebook().build(version=1)
    yield "streams", "fixed count vs length", _edit(codebook, _set(["streams", 0, "count"], 7))
    yield "streams", "fixed alphabet 2**32", _edit(
        codebook, lambda m: (m["streams"][0].update(alphabet=2**32),
                             _leaf0(m)["values"].update(alphabet=4)))
    for field, v in [("start", 1), ("start", -1), ("start", 2**40), ("count", 5), ("count", 7),
                     ("count", 2**40), ("alphabet", 5), ("alphabet", 0), ("stream", 1),
                     ("stream", -1), ("stream", True), ("stream", "0")]:
        yield "runs", f"{field} {v!r}", _edit(codebook, _set(["leaves", 0, "values", field], v))
    yield "runs", "runs overlap", _edit(shared, _set(["leaves", 2, "values", "start"], 1))
    yield "runs", "runs leave a gap", _edit(shared, lambda m: (
        m["leaves"][2]["values"].update(count=2), m["leaves"][2].update(shape=[2])))
    yield "runs", "run missing", _edit(codebook, lambda m: _leaf0(m)["values"].pop("start"))


def _leaf_cases():
    for v in [3, None, ["a"], "a" * 5000, "/".join(["x"] * 1000), "/".join(["x"] * 65)]:
        yield "leaf", f"path {str(v)[:20]!r}", _edit(raw_leaf, _set(["leaves", 0, "path"], v))
    yield "leaf", "path repeated", _edit(shared, _set(["leaves", 1, "path"], "a"))
    yield "leaf", "path through a leaf", _edit(shared, _set(["leaves", 1, "path"], "a/b"))
    yield "leaf", "path contains a leaf", _edit(shared, _set(["leaves", 0, "path"], "c1/x"))
    for v in [[-1], [2**62, 2**62], [2**31, 2**31], [1.5], [True], "3", [3] * 33, None,
              [2**40], [0, 2**62, 2**62], [4]]:
        yield "leaf", f"shape {str(v)[:20]}", _edit(raw_leaf, _set(["leaves", 0, "shape"], v))
    for v in [*HOSTILE_DTYPES, "float16", "int32"]:
        yield "leaf", f"dtype {v!r}", _edit(raw_leaf, _set(["leaves", 0, "dtype"], v))
        yield "leaf", f"raw dtype {v!r}", _edit(raw_leaf, _set(["leaves", 0, "data", "dtype"], v))
    for v in ["eval", "pickle", "", None, 1, "RAW"]:
        yield "leaf", f"kind {v!r}", _edit(raw_leaf, _set(["leaves", 0, "kind"], v))
    for key in ("path", "kind", "shape", "dtype", "data"):
        yield "leaf", f"missing {key}", _edit(raw_leaf, lambda m, k=key: _leaf0(m).pop(k))
    yield "leaf", "raw codec", _edit(raw_leaf, _set(["leaves", 0, "data", "codec"], "fixed"))
    yield "leaf", "raw shape", _edit(raw_leaf, _set(["leaves", 0, "data", "shape"], [4]))
    yield "leaf", "raw huge shape", _edit(raw_leaf, _set(["leaves", 0, "data", "shape"], [2**40]))
    yield "leaf", "leaves not a list", _edit(raw_leaf, _set(["leaves"], {"b": 1}))
    yield "leaf", "leaf not an object", _edit(raw_leaf, _set(["leaves", 0], ["b"]))
    yield "leaf", "records inflating past the ratio", _edit(raw_leaf, lambda m: m["leaves"].extend(
        [{"path": f"z{i}", "kind": "raw", "shape": [0], "dtype": "float32",
          "data": {"codec": "raw", "dtype": "float32", "shape": [0], "section": 0,
                   "offset": 12}} for i in range(1 << 15)]), compress=True)
    yield "leaf", "quantized to ints", _edit(codebook, _set(["leaves", 0, "dtype"], "int8"))


def _sparse_cases():
    for field, v in [("index_bits", 0), ("index_bits", 17), ("index_bits", 3), ("kept", 3),
                     ("kept", -1), ("kept", 1), ("kept", None), ("filler", 3), ("filler", 0),
                     ("filler", None), ("filler", 99), ("shape", [9])]:
        yield "sparse", f"{field} {v!r}", _edit(sparse_codebook, _set(["leaves", 0, field], v))
    for field, v in [("kept", 3), ("kept", 1), ("kept", 0), ("shape", [5]),
                     ("index_bits", 1)]:
        yield "sparse", f"float {field} {v!r}", _edit(sparse_float, _set(["leaves", 0, field], v))
    yield "sparse", "float without index", _edit(sparse_float, lambda m: _leaf0(m).pop("index"))
    yield "sparse", "values count", _edit(sparse_float, _set(["leaves", 0, "values", "shape"], [3]))
    yield "sparse", "values dtype", _edit(sparse_float, _set(["leaves", 0, "values", "dtype"],
                                                            "int32"))

    def overflow():  # relative indices that run past the leaf
        c = Craft()
        c.leaf(path="w", kind="sparse", shape=[6], dtype="float32", index=c.fixed([3, 3], 4),
               index_bits=2, kept=2, values=c.raw(np.array([1.0, 2.0], F32)))
        return c.build()

    yield "sparse", "indices past the leaf", overflow()

    def filler_at_real_index():  # a filler symbol at an entry whose code is not the filler code
        c = Craft()
        c.leaf(path="sp", kind="codebook", shape=[12], dtype="float32", bits=2,
               index_dtype="uint8", centroids=c.raw(np.array([0, 1, 2, 3], F32)),
               index=c.fixed([0, 1, 3, 0], 4), index_bits=2, kept=2,
               values=c.fixed([1, 4, 4, 3], 5), filler=4)
        return c.build()

    yield "sparse", "filler at a real index", filler_at_real_index()

    def too_many_fillers():
        c = Craft()
        c.leaf(path="w", kind="sparse", shape=[8], dtype="float32",
               index=c.fixed([0, 0, 0, 0, 0, 0], 2), index_bits=1, kept=1,
               values=c.raw(np.zeros(6, F32)))
        return c.build()

    yield "sparse", "more fillers than the leaf needs", too_many_fillers()


def _codebook_cases():
    for field, v in [("bits", 0), ("bits", 1), ("bits", 17), ("bits", None), ("bits", 2.0)]:
        yield "codebook", f"{field} {v!r}", _edit(codebook, _set(["leaves", 0, field], v))
    for v in [*HOSTILE_DTYPES, "bool", "float16", "float32", "bfloat16"]:
        yield "codebook", f"index dtype {v!r}", _edit(codebook, _set(["leaves", 0, "index_dtype"],
                                                                      v))
    for v in [*HOSTILE_DTYPES, "int32", "bool"]:
        yield "codebook", f"centroid dtype {v!r}", _edit(
            codebook, _set(["leaves", 0, "centroids", "dtype"], v))
    yield "codebook", "centroids 2-D", _edit(codebook, _set(["leaves", 0, "centroids", "shape"],
                                                            [2, 2]))
    yield "codebook", "missing centroids", _edit(codebook, lambda m: _leaf0(m).pop("centroids"))

    def with_centroids(cent, bits=9, index_dtype="uint8", symbols=(0, 1, 2, 3, 0, 0), alph=None):
        c = Craft()
        alph = alph or max(symbols) + 1
        c.leaf(path="cb", kind="codebook", shape=[2, 3], dtype="float32", bits=bits,
               index_dtype=index_dtype, centroids=c.raw(np.asarray(cent, F32)),
               values=c.fixed(list(symbols), alph))
        return c.build()

    yield "codebook", "300 centroids, uint8", with_centroids(np.zeros(300),
                                                            symbols=(299, 0, 0, 0, 0, 0))
    yield "codebook", "empty codebook", with_centroids(np.zeros(0), bits=2)
    yield "codebook", "5 centroids at 2 bits", with_centroids(np.zeros(5), bits=2)
    yield "codebook", "indices past the codebook", with_centroids(np.zeros(3), bits=2,
                                                                 symbols=(0, 1, 3, 0, 0, 0))
    for bad in (np.nan, np.inf, -np.inf):
        yield "codebook", f"centroid {bad}", with_centroids([0, 1, bad, 3], bits=2)

    def symbol_above_run_alphabet():  # the stream is wider than the leaf's own alphabet
        c = Craft()
        j = c.stream("fixed", pack([0, 1, 2, 3, 3, 0], 2), 6, 4)
        c.leaf(path="cb", kind="codebook", shape=[6], dtype="float32", bits=2,
               index_dtype="uint8", centroids=c.raw(np.zeros(3, F32)), values=c.run(j, 6, 3))
        return c.build()

    yield "codebook", "symbol above the run's alphabet", symbol_above_run_alphabet()


def _qarray_cases():
    def with_scale(scale_shape, zp_shape, shape=(2, 3), scale_value=0.5):
        c = Craft()
        n = int(np.prod(shape))
        c.leaf(path="q", kind="qarray", shape=list(shape), dtype="float32", bits=4, axis=None,
               values_dtype="int8", offset=0,
               scale=c.raw(np.full(scale_shape, scale_value, F32)),
               zero_point=c.raw(np.zeros(zp_shape, F32)), values=c.fixed([1] * n, 2))
        return c.build()

    n = 4096
    yield "qarray", "broadcast bomb (n,1)x(1,n) on [1,1]", with_scale((n, 1), (1, n), (1, 1))
    yield "qarray", "scale (7,1,1) on [2,3]", with_scale((7, 1, 1), (1, 1), (2, 3))
    yield "qarray", "scale (3,) on [2,3] axis", with_scale((2,), (1,), (2, 3))
    yield "qarray", "zero point (2,3,1)", with_scale((1,), (2, 3, 1), (2, 3))
    for bad in (np.nan, np.inf, -np.inf):
        yield "qarray", f"scale {bad}", with_scale((1, 1), (1, 1), scale_value=bad)
    for field, v in [("bits", 0), ("bits", 33), ("bits", 1), ("axis", 2), ("axis", -3),
                     ("axis", 1.0), ("offset", 2**40), ("offset", 127), ("offset", -200),
                     ("offset", None), ("values_dtype", "int64"), ("values_dtype", "float32"),
                     ("values_dtype", "bool"), ("values_dtype", "object")]:
        yield "qarray", f"{field} {v!r}", _edit(qarray, _set(["leaves", 0, field], v))
    for field in ("scale", "zero_point", "values", "values_dtype", "offset", "axis", "bits"):
        yield "qarray", f"missing {field}", _edit(qarray, lambda m, f=field: _leaf0(m).pop(f))
    for v in [*HOSTILE_DTYPES, "int8"]:
        yield "qarray", f"scale dtype {v!r}", _edit(qarray, _set(["leaves", 0, "scale", "dtype"],
                                                                 v))


def _huffman_cases():
    def file(payload, count=6):
        return codebook("huffman", payload, count).build()

    def dense(lengths, **kw):
        table = len(lengths).to_bytes(4, "little") + pack(lengths, 5)
        return huffman_payload(0, table, **kw)

    good = _huffman_valid()
    yield "huffman", "lengths above 20", file(dense([1, 2, 3, 21]))
    yield "huffman", "Kraft over-full", file(dense([1, 1, 3, 3]))
    yield "huffman", "Kraft under-full", file(dense([2, 2, 3, 0]))
    yield "huffman", "one used symbol, mode 0", file(dense([1, 0, 0, 0]))
    yield "huffman", "table larger than alphabet", file(dense([1, 2, 3, 4, 4]))
    yield "huffman", "unknown mode", file(bytes([7]) + good[1:])
    yield "huffman", "sparse symbols not increasing", file(huffman_payload(
        1, (2).to_bytes(4, "little") + pack([1, 0], 2) + pack([1, 1], 5), pad=0,
        codes=b"\x00"))
    yield "huffman", "single symbol out of range", file(huffman_payload(
        2, (9).to_bytes(4, "little")))
    yield "huffman", "single symbol with payload", file(huffman_payload(
        2, (1).to_bytes(4, "little"), codes=b"\x00"))
    for lanes in (0, 7, 2**32 - 1):
        yield "huffman", f"lanes {lanes}", file(_huffman_with(lanes=lanes))
    yield "huffman", "offset width 40", file(_huffman_with(ow=40))
    yield "huffman", "padding 9", file(_huffman_with(pad=9))
    yield "huffman", "count above payload bits", file(good, 100)
    yield "huffman", "count 2**40", file(good, 2**40)
    yield "huffman", "truncated", file(good[:-1])
    yield "huffman", "header only", file(good[:6])
    yield "huffman", "lane lengths past payload", file(_huffman_with(lanes=2, ow=8, base=200,
                                                                   lane_bits=b"\x00"))
    yield "huffman", "symbols past the lane ends", file(good + b"\x00")


def _huffman_with(**kw):
    bits = "0" + "10" + "110" + "111" + "0" + "0"
    pad = -len(bits) % 8
    codes = int(bits + "0" * pad, 2).to_bytes(2, "big")
    args = {"pad": pad, "codes": codes, **kw}
    return huffman_payload(0, (4).to_bytes(4, "little") + pack([1, 2, 3, 3], 5), **args)


def _ans_cases():
    def file(payload, count=6):
        return codebook("ans", payload, count).build()

    yield "ans", "lanes 0", file(_ans_single(lanes=0))
    yield "ans", "lanes above count", file(_ans_single(lanes=7), 6)
    yield "ans", "state below 2**16", file(_ans_single(state=5))
    yield "ans", "state not the initial one", file(_ans_single(state=(1 << 16) + 1))
    yield "ans", "count beyond its steps", file(_ans_single(), 2**20)
    yield "ans", "count 2**40", file(_ans_single(), 2**40)
    dense = (4).to_bytes(4, "little")
    freqs = [np.array([100, 100, 0, 0]), np.array([65535, 0, 0, 0]), np.array([40000, 30000, 0, 0])]
    for f in freqs:
        table = f.astype("<u2").tobytes()
        yield "ans", f"frequencies {f.tolist()}", file(
            (1).to_bytes(4, "little") + b"\x00" + dense + table + (1 << 16).to_bytes(4, "little"))
    yield "ans", "unknown mode", file((1).to_bytes(4, "little") + b"\x05" + _ans_single()[5:])
    yield "ans", "table larger than alphabet", file(
        (1).to_bytes(4, "little") + b"\x00" + (9).to_bytes(4, "little") + b"\x00" * 18
        + (1 << 16).to_bytes(4, "little"))
    yield "ans", "sparse symbols not increasing", file(ans_payload(
        1, 1, 2, pack([1, 0], 2) + (32767).to_bytes(2, "little") * 2, [1 << 16]))
    yield "ans", "odd word stream", file(_ans_single() + b"\x00")
    yield "ans", "words left over", file(_ans_single() + b"\x00\x00")
    yield "ans", "truncated", file(_ans_single()[:-1])
