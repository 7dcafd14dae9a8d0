"""Parsing the ``.jrm`` manifest into typed records, checking every field on the way.

Layout (integers little-endian)::

    offset  size  field
    0       8     magic  b"\\x89JRM\\r\\n\\x1a\\n"
    8       2     format version (2; version 1 files are read too)
    10      2     flags (bit 0: the manifest is zlib-compressed)
    12      4     manifest length M (as stored)
    16      4     CRC32 of the stored manifest
    20      M     manifest: UTF-8 JSON
    20+M    ...   sections, back to back, lengths and CRC32s in the manifest

``parse`` is the one reader of this layout: it checks every field's type
and range, every size against the bytes present and against the caller's
``max_elements`` before anything is allocated, and turns the JSON into the
frozen records of ``_records``. ``decode`` and ``report`` both start from it.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

import numpy as np

from jaxrm.coding import _sparse, _streams
from jaxrm.coding._bits import FormatError
from jaxrm.coding._records import (
    _MANIFEST_FREE,
    DEFAULT_MAX_ELEMENTS,
    DTYPES,
    FLAG_ZLIB,
    FLOATS,
    HEADER,
    INTS,
    LEAF_CHARGE,
    MAGIC,
    MAX_MANIFEST_RATIO,
    MAX_NDIM,
    MAX_PIECES,
    READS,
    CodebookLeaf,
    Leaf,
    Manifest,
    Pieces,
    QArrayLeaf,
    Raw,
    RawLeaf,
    Run,
    Sparse,
    SparseLeaf,
    Stream,
    Symbols,
    broadcasts_into,
    check_path,
    codebook_fits,
)

__all__ = ["parse"]


# ------------------------------------------------------------------ checking


def _int(x: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
        raise FormatError(f"{what} must be an integer in [{lo}, {hi}], got {x!r}"[:300])
    return x


def _obj(x: Any, keys: set[str], what: str) -> dict:
    if not isinstance(x, dict) or not keys <= set(x):
        raise FormatError(f"{what} must be an object with fields {sorted(keys)}")
    return x


def _dtype(name: Any, what: str, allowed: frozenset[str] | None = None) -> np.dtype:
    if not isinstance(name, str) or name not in DTYPES or (allowed and name not in allowed):
        raise FormatError(f"{what} has a dtype {name!r}"[:300] + " that is not allowed here")
    return DTYPES[name]


def _shape(x: Any, limit: int, what: str, limit_name: str = "the limit") -> tuple[int, ...]:
    if not isinstance(x, list) or len(x) > MAX_NDIM:
        raise FormatError(f"{what} is not a shape of at most {MAX_NDIM} dimensions")
    shape = tuple(_int(d, 0, limit, f"{what} dimension") for d in x)
    if math.prod(shape) > limit:
        raise FormatError(f"{what} has {math.prod(shape)} elements, above {limit_name}={limit}")
    return shape



def _manifest_text(data: memoryview, flags: int, mlen: int) -> bytes:
    text = bytes(data[HEADER.size : HEADER.size + mlen])
    if not flags & FLAG_ZLIB:
        return text
    limit = MAX_MANIFEST_RATIO * mlen + _MANIFEST_FREE
    inflater = zlib.decompressobj()
    out = inflater.decompress(text, limit)
    if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
        raise FormatError(f"compressed manifest does not inflate to at most {limit} bytes")
    return out


def _bad_constant(c: str) -> Any:
    raise FormatError(f"bad number {c} in the manifest")


class _Parser:
    def __init__(self, data: memoryview, max_elements: int):
        if len(data) < HEADER.size:
            raise FormatError(f"{len(data)} bytes is too short for a .jrm file")
        magic, version, flags, mlen, mcrc = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise FormatError("not a .jrm file (wrong magic bytes)")
        if version not in READS:
            raise FormatError(f"unsupported .jrm format version {version} (this reads 1 and 2)")
        if flags & ~FLAG_ZLIB or (version == 1 and flags):
            raise FormatError(f"unknown flags {flags:#x}")
        if mlen > len(data) - HEADER.size:
            raise FormatError("manifest length runs past the end of the data")
        if zlib.crc32(data[HEADER.size : HEADER.size + mlen]) != mcrc:
            raise FormatError("manifest CRC32 mismatch (the file is corrupted)")
        text = _manifest_text(data, flags, mlen)
        m = json.loads(text.decode("utf-8"), parse_constant=_bad_constant)
        m = _obj(m, {"leaves", "sections"}, "manifest")
        self.version = version
        self.overhead = HEADER.size + mlen
        self.budget = max_elements
        self.max_elements = max_elements
        self.sections = self._sections(m["sections"], data)
        self.streams: list[Stream] = []
        self.runs: list[list[tuple[int, int]]] = []
        self.raw_spans: dict[int, list[tuple[int, int]]] = {}
        self.stream_sections: set[int] = set()
        streams = m.get("streams", [])
        if (version == 1 and "streams" in m) or not isinstance(streams, list):
            raise FormatError("manifest streams must be a list (version 2 only)")
        for i, s in enumerate(streams):
            self._stream(s, f"stream {i}")
        leaves = m["leaves"]
        if not isinstance(leaves, list):
            raise FormatError("manifest leaves must be a list")
        if len(leaves) * LEAF_CHARGE > max_elements:
            raise FormatError(f"{len(leaves)} leaves exceed max_elements={max_elements}")
        self.leaves = tuple(self._leaf(e, i) for i, e in enumerate(leaves))
        self._check_tiling()
        _check_paths([e.path for e in self.leaves])

    # -- sections, streams and their use

    def _sections(self, secs: Any, data: memoryview) -> tuple[memoryview, ...]:
        if not isinstance(secs, list):
            raise FormatError("manifest sections must be a list")
        pos, out = self.overhead, []
        for i, s in enumerate(secs):
            s = _obj(s, {"length", "crc32"}, f"section {i}")
            n = _int(s["length"], 0, len(data) - pos, f"section {i} length")
            out.append(data[pos : pos + n])
            if zlib.crc32(out[-1]) != _int(s["crc32"], 0, 2**32 - 1, f"section {i} crc32"):
                raise FormatError(f"section {i} CRC32 mismatch (the file is corrupted)")
            pos += n
        if pos != len(data):
            raise FormatError(f"{len(data) - pos} trailing bytes after the last section")
        return tuple(out)

    def _section_index(self, x: Any, what: str) -> int:
        return _int(x, 0, len(self.sections) - 1, f"{what} section")

    def _stream(self, s: Any, what: str) -> int:
        s = _obj(s, {"codec", "count", "alphabet", "section"}, what)
        if s["codec"] not in _streams.CODECS:
            raise FormatError(f"{what} has an unknown codec {s['codec']!r}"[:300])
        top = 1 << 32 if s["codec"] == "fixed" else _streams.MAX_ENTROPY_ALPHABET
        section = self._section_index(s["section"], what)
        if section in self.stream_sections:
            raise FormatError(f"{what} reuses section {section}")
        self.stream_sections.add(section)
        stream = Stream(
            codec=s["codec"],
            count=_int(s["count"], 0, 2 * self.max_elements, f"{what} count"),
            alphabet=_int(s["alphabet"], 1, top, f"{what} alphabet"),
            section=section,
        )
        self.streams.append(stream)
        self.runs.append([])
        return len(self.streams) - 1

    def _symbols(self, meta: Any, limit: int, what: str) -> Run:
        """A leaf's symbols: one run, or a list of runs (pieces, one per stacked slice)."""
        if not isinstance(meta, list):
            return self._run(meta, limit, what)
        if self.version == 1 or not 2 <= len(meta) <= MAX_PIECES:
            raise FormatError(f"{what}: a list of runs needs version 2 and 2 to {MAX_PIECES} runs")
        runs = tuple(self._run(r, limit, f"{what} piece {i}") for i, r in enumerate(meta))
        if any(r.alphabet != runs[0].alphabet for r in runs):
            raise FormatError(f"{what}: the pieces' alphabets differ")
        if sum(r.count for r in runs) > limit:
            raise FormatError(f"{what}: the pieces hold more than {limit} symbols")
        return Pieces(runs)

    def _run(self, meta: Any, limit: int, what: str) -> Symbols:
        """A run of symbols: a slice of a shared stream, or (inline) a stream of its own."""
        if isinstance(meta, dict) and "stream" not in meta:
            j = self._stream(meta, what)  # the version 1 form
            meta = {"stream": j, "start": 0, "count": meta["count"], "alphabet": meta["alphabet"]}
        meta = _obj(meta, {"stream", "start", "count", "alphabet"}, what)
        j = _int(meta["stream"], 0, len(self.streams) - 1, f"{what} stream")
        stream = self.streams[j]
        run = Symbols(
            stream=j,
            start=_int(meta["start"], 0, stream.count, f"{what} start"),
            count=_int(meta["count"], 0, limit, f"{what} count"),
            alphabet=_int(meta["alphabet"], 1, stream.alphabet, f"{what} alphabet"),
        )
        self.runs[j].append((run.start, run.count))
        return run

    def _raw(self, meta: Any, what: str, allowed: frozenset[str] | None = None) -> Raw:
        meta = _obj(meta, {"codec", "dtype", "shape", "section"}, what)
        if meta["codec"] != "raw":
            raise FormatError(f"{what} must be raw")
        section = self._section_index(meta["section"], what)
        length = len(self.sections[section])
        r = Raw(
            dtype=_dtype(meta["dtype"], what, allowed),
            shape=_shape(meta["shape"], length, what),
            section=section,
            offset=_int(meta.get("offset", 0), 0, length, f"{what} offset"),
        )
        if r.offset + r.nbytes > length:
            raise FormatError(f"{what} runs past the end of section {section}")
        self.raw_spans.setdefault(section, []).append((r.offset, r.nbytes))
        return r

    def _check_tiling(self) -> None:
        """Runs tile their stream and raw arrays their section: no gap, no overlap."""
        for j, (stream, runs) in enumerate(zip(self.streams, self.runs)):
            if not _tiles(runs, stream.count):
                raise FormatError(f"the leaves' runs do not exactly cover stream {j}")
        for i, spans in self.raw_spans.items():
            if i in self.stream_sections or not _tiles(spans, len(self.sections[i])):
                raise FormatError(f"raw arrays do not exactly fill section {i}")
        if len(self.stream_sections) + len(self.raw_spans) != len(self.sections):
            raise FormatError("the manifest has sections that nothing uses")

    # -- leaves

    def _charge(self, n: int, what: str) -> None:
        self.budget -= n + LEAF_CHARGE
        if self.budget < 0:
            raise FormatError(
                f"{what}: the file declares more than max_elements={self.max_elements} "
                "decoded elements (pass a larger max_elements to read a file you trust)"
            )

    def _sparse(self, e: dict, size: int, what: str) -> Sparse:
        e = _obj(e, {"index", "index_bits", "kept"}, what)
        bits = _int(e["index_bits"], 1, _sparse.MAX_INDEX_BITS, f"{what} index_bits")
        index = self._symbols(e["index"], size, f"{what} index")
        if index.alphabet != 1 << bits:
            raise FormatError(f"{what}: index alphabet disagrees with index_bits")
        kept = _int(e["kept"], 0, index.count, f"{what} kept")
        if index.count - kept > size >> bits:
            raise FormatError(f"{what}: more filler entries than {size} elements can need")
        return Sparse(index_bits=bits, index=index, kept=kept)

    def _leaf(self, e: Any, i: int) -> Leaf:
        e = _obj(e, {"path", "kind", "shape", "dtype"}, f"leaf {i}")
        path = check_path(e["path"], FormatError, f"leaf {i}")
        what = f"leaf {path[:200]!r}"
        shape = _shape(e["shape"], self.max_elements, what, "max_elements")
        base = {"path": path, "shape": shape, "dtype": _dtype(e["dtype"], what)}
        size = math.prod(shape)
        self._charge(size, what)
        kind = e["kind"]
        if kind == "raw":
            data = self._raw(_obj(e, {"data"}, what)["data"], what)
            if data.shape != shape or data.dtype != base["dtype"]:
                raise FormatError(f"{what}: raw data disagrees with the leaf")
            return RawLeaf(**base, data=data)
        if kind not in ("sparse", "codebook", "qarray"):
            raise FormatError(f"{what} has an unknown kind {kind!r}"[:300])
        sparse = self._sparse(e, size, what) if "index" in e or kind == "sparse" else None
        entries = size if sparse is None else sparse.entries
        if kind == "sparse":
            values = self._raw(_obj(e, {"values"}, what)["values"], f"{what} values")
            if values.shape != (entries,) or values.dtype != base["dtype"]:
                raise FormatError(f"{what}: values disagree with the indices")
            return SparseLeaf(**base, sparse=sparse, values=values)
        if base["dtype"].name not in FLOATS:
            raise FormatError(f"{what}: a quantized leaf decodes to floats")
        values = self._symbols(_obj(e, {"values", "bits"}, what)["values"], entries, what)
        if values.count != entries:
            raise FormatError(f"{what}: value count disagrees with the indices")
        filler = self._filler(e, sparse, values, what)
        symbols = values.alphabet - (filler is not None)  # the symbols that are values
        if kind == "codebook":
            return self._codebook(e, base, sparse, values, filler, symbols, what)
        return self._qarray(e, base, sparse, values, filler, symbols, what)

    def _filler(self, e: dict, sparse: Sparse | None, values: Run, what: str) -> int | None:
        filler = e.get("filler") if sparse is not None else None
        if filler is not None:
            filler = _int(filler, 1, values.alphabet - 1, f"{what} filler")
            if filler != values.alphabet - 1:
                raise FormatError(f"{what}: the filler must be the last symbol")
        if sparse is not None and filler is None and sparse.entries != sparse.kept:
            raise FormatError(f"{what}: filler entries without a filler symbol")
        return filler

    def _codebook(self, e, base, sparse, values, filler, symbols, what) -> CodebookLeaf:
        e = _obj(e, {"centroids", "index_dtype"}, what)
        bits = _int(e["bits"], 1, 16, f"{what} bits")
        centroids = self._raw(e["centroids"], f"{what} centroids", FLOATS)
        index_dtype = _dtype(e["index_dtype"], f"{what} index", INTS)
        k = centroids.shape[-1] if centroids.shape else 0
        if not codebook_fits(centroids.shape, base["shape"]) or not 1 <= k <= 1 << bits:
            raise FormatError(
                f"{what}: centroids must be 1 to 2**bits entries, one codebook or one per slice"
            )
        if k - 1 > np.iinfo(index_dtype).max:
            raise FormatError(f"{what}: {k} centroids do not fit {index_dtype.name} indices")
        if symbols > k:
            raise FormatError(f"{what}: indices may exceed the codebook")
        return CodebookLeaf(
            **base, bits=bits, index_dtype=index_dtype, centroids=centroids,
            values=values, sparse=sparse, filler=filler,
        )  # fmt: skip

    def _qarray(self, e, base, sparse, values, filler, symbols, what) -> QArrayLeaf:
        e = _obj(e, {"scale", "zero_point", "values_dtype", "offset", "axis"}, what)
        shape = base["shape"]
        bits = _int(e["bits"], 1, 32, f"{what} bits")
        vdtype = _dtype(e["values_dtype"], f"{what} values", INTS)
        if vdtype.itemsize > 4:
            raise FormatError(f"{what}: values dtype must be an integer of at most 32 bits")
        offset = _int(e["offset"], -(1 << 32), 1 << 32, f"{what} offset")
        axis = e["axis"]
        if axis is not None:
            axis = _int(axis, -max(len(shape), 1), max(len(shape) - 1, 0), f"{what} axis")
        packed = e.get("packed", False)
        if not isinstance(packed, bool):
            raise FormatError(f"{what}: packed must be true or false")
        if packed and (bits > 4 or not shape or shape[-1] % 2 or vdtype.itemsize != 1):
            raise FormatError(f"{what}: packed values need at most 4 bits and an even last axis")
        group_size = e.get("group_size")
        if group_size is not None:
            group_size = _int(group_size, 1, max(shape, default=1), f"{what} group_size")
        info = np.iinfo(vdtype)
        top = offset + symbols - 1
        if offset < max(info.min, -(1 << (bits - 1))) or top > min(info.max, (1 << bits) - 1):
            raise FormatError(f"{what}: values outside their dtype or {bits} bits")
        scale = self._raw(e["scale"], f"{what} scale", FLOATS)
        zero_point = self._raw(e["zero_point"], f"{what} zero_point", FLOATS)
        for name, r in (("scale", scale), ("zero_point", zero_point)):
            if not broadcasts_into(r.shape, shape, group_size):
                raise FormatError(f"{what}: {name} of shape {r.shape} does not fit {shape}")
        return QArrayLeaf(
            **base, packed=packed, group_size=group_size, bits=bits, axis=axis,
            values_dtype=vdtype, offset=offset, scale=scale, zero_point=zero_point,
            values=values, sparse=sparse, filler=filler,
        )  # fmt: skip


def _check_paths(paths: list[str]) -> None:
    """No path repeats, and none runs through another (they nest into one dict)."""
    known = set(paths)
    if len(known) != len(paths):
        raise FormatError("the manifest repeats a leaf path")
    if len(paths) == 1:
        return
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in known:
                raise FormatError(f"path {path[:200]!r} runs through another leaf")


def _tiles(spans: list[tuple[int, int]], length: int) -> bool:
    pos = 0
    for start, n in sorted(spans):
        if start != pos:
            return False
        pos += n
    return pos == length


def _check_side_data(m: Manifest) -> None:
    """Centroids, scales and zero points are finite (they are small: read them all)."""
    for leaf in m.leaves:
        for name in ("centroids", "scale", "zero_point"):
            r = getattr(leaf, name, None)
            if r is None:
                continue
            with np.errstate(invalid="ignore"):  # a NaN of a narrow float type warns on the cast
                finite = np.isfinite(m.raw(r).astype(np.float64)).all()
            if not finite:
                raise FormatError(f"leaf {leaf.path[:200]!r}: {name} holds NaN or Inf")


def parse(data: Any, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Manifest:
    """Checks ``data`` and returns its records; every failure is a ``FormatError``.

    Args:
      data: the bytes of a ``.jrm`` file.
      max_elements: the most decoded elements the file may declare (each leaf
        counts ``LEAF_CHARGE`` more).

    Raises:
      FormatError: ``data`` is not a well-formed ``.jrm`` file within the limits.
      TypeError: ``data`` is not bytes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if isinstance(max_elements, bool) or not isinstance(max_elements, int):
        raise TypeError(f"max_elements must be an int, got {type(max_elements).__name__}")
    if max_elements < 0:
        raise ValueError(f"max_elements must be >= 0, got {max_elements}")
    try:
        p = _Parser(memoryview(data).cast("B"), max_elements)
        m = Manifest(
            version=p.version,
            sections=p.sections,
            streams=tuple(p.streams),
            leaves=p.leaves,
            overhead=p.overhead,
            elements=sum(e.size for e in p.leaves),
        )
        _check_side_data(m)
        return m
    except (FormatError, MemoryError):
        raise
    except Exception as e:  # any stray failure of a malformed file is a format error
        raise FormatError(f"malformed .jrm data: {type(e).__name__}: {e}"[:500]) from e
