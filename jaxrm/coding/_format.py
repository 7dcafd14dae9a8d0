"""The ``.jrm`` container: ``encode``/``decode`` and atomic ``save``/``load``.

Layout (integers little-endian)::

    offset  size  field
    0       8     magic  b"\\x89JRM\\r\\n\\x1a\\n"
    8       2     format version (1)
    10      2     flags (0)
    12      4     manifest length M
    16      4     CRC32 of the manifest
    20      M     manifest: UTF-8 JSON
    20+M    ...   sections, back to back, lengths and CRC32s in the manifest

Nothing is executed or unpickled on load: the manifest is JSON, every field is
type- and range-checked, every size is checked against the bytes present and
the decoder's limits before anything is allocated.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxrm.coding import _sparse, _streams
from jaxrm.coding._bits import FormatError, bit_width
from jaxrm.quant._types import Codebook, QArray, is_quantized
from jaxrm.tree import aligned, path_str

__all__ = ["MAGIC", "VERSION", "decode", "encode", "load", "parse", "save"]

MAGIC = b"\x89JRM\r\n\x1a\n"
VERSION = 1
_HEADER = struct.Struct("<8sHHII")
# Decoded elements allowed per byte of input, plus a flat allowance: a pruned
# leaf stores nothing for its zeros, so its size is bounded only by this.
_ELEMENTS_PER_BYTE = 512
_FREE_ELEMENTS = 1 << 26
_MAX_NDIM = 32
_MAX_LEAVES = 1 << 20

_DTYPES = {
    name: np.dtype(t)
    for name, t in {
        "bool": np.bool_,
        "int8": np.int8,
        "int16": np.int16,
        "int32": np.int32,
        "int64": np.int64,
        "uint8": np.uint8,
        "uint16": np.uint16,
        "uint32": np.uint32,
        "uint64": np.uint64,
        "float16": np.float16,
        "bfloat16": ml_dtypes.bfloat16,
        "float32": np.float32,
        "float64": np.float64,
    }.items()
}


# --------------------------------------------------------------------- encode


def _dtype_name(dtype: Any, path: str, what: str = "leaf") -> str:
    name = np.dtype(dtype).name
    if name not in _DTYPES:
        raise TypeError(f"{what} at {path!r} has dtype {name}, which a .jrm file cannot hold")
    return name


def _raw(arr: np.ndarray, sections: list[bytes]) -> dict:
    sections.append(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
    return {
        "codec": "raw",
        "dtype": arr.dtype.name,
        "shape": list(arr.shape),
        "section": len(sections) - 1,
    }


def _stream(sym: np.ndarray, alphabet: int, codec: str, sections: list[bytes]) -> dict:
    data, meta = _streams.encode(sym, alphabet, codec)
    sections.append(data)
    meta["section"] = len(sections) - 1
    return meta


def _choose_index_bits(gap: np.ndarray, value_counts, codec: str, raw_bits: int) -> int:
    """The index width minimizing the estimated size of index plus value streams."""
    if len(gap) == 0:
        return 1
    top = max(1, min(_sparse.MAX_INDEX_BITS, bit_width(int(gap.max()) - 1)))
    best, best_cost = 1, math.inf
    for b in range(1, top + 1):
        fillers = int(((gap - 1) >> b).sum())
        idx = np.bincount((gap - 1) & ((1 << b) - 1), minlength=1 << b)
        idx[-1] += fillers
        cost = _streams.estimate_bits(idx, codec)
        if value_counts is None:
            cost += (len(gap) + fillers) * raw_bits
        else:
            counts = np.append(value_counts, fillers) if fillers else value_counts
            cost += _streams.estimate_bits(counts, codec)
        if cost < best_cost:
            best, best_cost = b, cost
    return best


def _index_bits_for(choice: Any, path: str) -> int | None:
    if choice is None:
        return None
    if isinstance(choice, bool) or not isinstance(choice, int | np.integer):
        raise TypeError(f"index_bits at {path!r} must be an int or None, got {choice!r}")
    if not 1 <= int(choice) <= _sparse.MAX_INDEX_BITS:
        raise ValueError(
            f"index_bits at {path!r} must be in [1, {_sparse.MAX_INDEX_BITS}], got {choice}"
        )
    return int(choice)


def _sparse_streams(
    mask: np.ndarray,
    value_sym: np.ndarray | None,
    alphabet: int,
    raw_values: np.ndarray | None,
    codec: str,
    bits: int | None,
    sections: list[bytes],
) -> dict:
    """Index stream plus value stream (symbols or raw) of the kept entries."""
    gap = _sparse.gaps(mask)
    if bits is None:
        counts = None if value_sym is None else np.bincount(value_sym, minlength=alphabet)
        raw_bits = 0 if raw_values is None else raw_values.dtype.itemsize * 8
        bits = _choose_index_bits(gap, counts, codec, raw_bits)
    codes, real = _sparse.relative_indices(gap, bits)
    entry: dict = {"index_bits": bits, "kept": len(real)}
    entry["index"] = _stream(codes, 1 << bits, codec, sections)
    fillers = len(codes) > len(real)
    if value_sym is not None:
        filler = alphabet if fillers else None
        sym = np.full(len(codes), alphabet, np.int64)
        sym[real] = value_sym
        entry["filler"] = filler
        entry["values"] = _stream(sym, alphabet + (1 if fillers else 0), codec, sections)
    else:
        vals = np.zeros(len(codes), raw_values.dtype)  # fillers hold +0
        vals[real] = raw_values
        entry["values"] = _raw(vals, sections)
    return entry


def _leaf_entry(path: str, leaf: Any, mask: Any, codec: str, bits, sections) -> dict:
    if isinstance(leaf, Codebook):
        own = None if leaf.mask is None else np.asarray(leaf.mask, bool)
        if mask is not None:
            own = mask if own is None else own & mask
        idx = np.asarray(leaf.indices)
        cent = np.asarray(leaf.centroids)
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"Codebook at {path!r} has non-integer indices ({idx.dtype})")
        _dtype_name(cent.dtype, path, "Codebook centroids")
        out_dtype = _dtype_name(leaf.dtype, path)
        k = int(cent.shape[0]) if cent.ndim == 1 else -1
        if k < 1:
            raise ValueError(f"Codebook at {path!r} needs a non-empty 1-D centroids array")
        flat = idx.reshape(-1).astype(np.int64)
        kept = flat if own is None else flat[own.reshape(-1)]
        if kept.size and (kept.min() < 0 or kept.max() >= k):
            raise ValueError(f"Codebook at {path!r} has indices outside [0, {k})")
        entry = {
            "kind": "codebook",
            "shape": list(idx.shape),
            "dtype": out_dtype,
            "bits": int(leaf.bits),
            "index_dtype": _dtype_name(idx.dtype, path, "Codebook indices"),
            "centroids": _raw(cent, sections),
        }
        if own is None:
            entry["values"] = _stream(kept, k, codec, sections)
        else:
            entry.update(_sparse_streams(own, kept, k, None, codec, bits, sections))
        return entry
    if isinstance(leaf, QArray):
        vals = np.asarray(leaf.values)
        if not np.issubdtype(vals.dtype, np.integer) or vals.dtype.itemsize > 4:
            raise TypeError(f"QArray at {path!r} needs integer values of at most 32 bits")
        scale = np.asarray(leaf.scale)
        zp = np.asarray(leaf.zero_point)
        _dtype_name(scale.dtype, path, "QArray scale")
        _dtype_name(zp.dtype, path, "QArray zero_point")
        flat = vals.reshape(-1).astype(np.int64)
        kept = flat if mask is None else flat[mask.reshape(-1)]
        offset = int(kept.min()) if kept.size else 0
        alphabet = (int(kept.max()) - offset + 1) if kept.size else 1
        entry = {
            "kind": "qarray",
            "shape": list(vals.shape),
            "dtype": _dtype_name(leaf.dtype, path),
            "bits": int(leaf.bits),
            "axis": None if leaf.axis is None else int(leaf.axis),
            "values_dtype": _dtype_name(vals.dtype, path, "QArray values"),
            "offset": offset,
            "scale": _raw(scale, sections),
            "zero_point": _raw(zp, sections),
        }
        if mask is None:
            entry["values"] = _stream(kept - offset, alphabet, codec, sections)
        else:
            sparse = _sparse_streams(mask, kept - offset, alphabet, None, codec, bits, sections)
            entry.update(sparse)
        return entry
    arr = np.asarray(leaf)
    name = _dtype_name(arr.dtype, path)
    if mask is None:
        return {"kind": "raw", "shape": list(arr.shape), "dtype": name, "data": _raw(arr, sections)}
    entry = {"kind": "sparse", "shape": list(arr.shape), "dtype": name}
    entry.update(
        _sparse_streams(mask, None, 0, arr.reshape(-1)[mask.reshape(-1)], codec, bits, sections)
    )
    return entry


def _flatten(tree: Any) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_quantized)
    out, seen = [], set()
    for kp, leaf in flat:
        path = path_str(kp)
        if path in seen:
            raise ValueError(f"tree has two leaves at path {path!r}")
        seen.add(path)
        if isinstance(leaf, bool | int | float | np.generic):
            leaf = np.asarray(leaf)
        elif not (is_quantized(leaf) or isinstance(leaf, np.ndarray | jax.Array)):
            raise TypeError(f"leaf at {path!r} is a {type(leaf).__name__}, not an array")
        out.append((path, leaf))
    return out


def _per_leaf(tree: Any, paths: list[str], other: Any, argument: str) -> dict[str, Any]:
    """Maps each leaf path of ``tree`` (quantized leaves whole) to ``other``'s entry."""
    return dict(zip(paths, aligned(tree, other, argument, shapes=False, is_leaf=is_quantized)))


def encode(
    tree: Any,
    *,
    masks: Any = None,
    entropy: str = "huffman",
    index_bits: Any = None,
) -> bytes:
    """Encodes a (pruned, quantized) parameter tree into ``.jrm`` bytes.

    Each leaf is stored by what it is:

    * ``quant.Codebook``: the codebook indices of the kept entries, entropy
      coded, plus the centroids; with a mask (its own, or from ``masks``) the
      kept entries are addressed by sparse relative indices.
    * ``quant.QArray``: its integer values (minus their minimum), entropy
      coded, plus scale and zero point; sparse indices if ``masks`` has a mask.
    * a float (or integer) array with a mask: sparse indices and the raw kept values.
    * any other array: raw, in its dtype.

    Args:
      tree: a pytree of arrays, ``QArray`` and ``Codebook`` leaves.
      masks: ``None`` or a pytree of ``tree``'s structure (one entry per
        array, ``QArray`` or ``Codebook`` leaf) of ``bool`` masks (``False`` =
        pruned) or ``None`` for dense leaves. Pruned entries decode to 0.
      entropy: ``"huffman"`` (canonical Huffman), ``"ans"`` (interleaved
        rANS, close to the empirical entropy) or ``"none"`` (fixed-width bit
        packing).
      index_bits: bits per relative index: ``None`` picks, per leaf, the width
        that minimizes the leaf's estimated size (exact for ``"none"``); an
        int in ``[1, 16]`` for every leaf; or a pytree of ``tree``'s structure
        with an int or ``None`` per leaf.

    Returns:
      The file contents.

    Raises:
      ValueError: bad ``entropy``/``index_bits``, or ``masks``/``index_bits``
        not matching the tree (the message names the leaf path).
      TypeError: a leaf, mask or setting of the wrong type.
    """
    if entropy not in _streams.ENTROPY_MODES:
        raise ValueError(f"entropy must be 'huffman', 'ans' or 'none', got {entropy!r}")
    codec = _streams.ENTROPY_MODES[entropy]
    leaves = _flatten(tree)
    paths = [p for p, _ in leaves]
    mask_of = {} if masks is None else _per_leaf(tree, paths, masks, "masks")
    if index_bits is None or isinstance(index_bits, int | np.integer):
        bits_of = {p: _index_bits_for(index_bits, p) for p in paths}
    else:
        given = _per_leaf(tree, paths, index_bits, "index_bits")
        bits_of = {p: _index_bits_for(given[p], p) for p in paths}
    sections: list[bytes] = []
    entries = []
    for path, leaf in leaves:
        mask = mask_of.get(path)
        if mask is not None:
            if not hasattr(mask, "dtype") or np.dtype(mask.dtype) != np.bool_:
                raise TypeError(f"masks at {path!r} must be a bool array or None")
            mask = np.asarray(mask)
            if mask.shape != tuple(np.shape(leaf) if not is_quantized(leaf) else leaf.shape):
                raise ValueError(
                    f"masks at {path!r} has shape {mask.shape}, expected {tuple(leaf.shape)}"
                )
        entry = {"path": path}
        entry.update(_leaf_entry(path, leaf, mask, codec, bits_of[path], sections))
        entries.append(entry)
    manifest = {
        "leaves": entries,
        "sections": [{"length": len(s), "crc32": zlib.crc32(s)} for s in sections],
    }
    text = json.dumps(manifest, separators=(",", ":"), allow_nan=False).encode()
    header = _HEADER.pack(MAGIC, VERSION, 0, len(text), zlib.crc32(text))
    return b"".join([header, text, *sections])


# --------------------------------------------------------------------- decode


def _int(x: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
        raise FormatError(f"{what} must be an integer in [{lo}, {hi}], got {x!r}")
    return x


def _obj(x: Any, keys: set[str], what: str) -> dict:
    if not isinstance(x, dict) or not keys <= set(x):
        raise FormatError(f"{what} must be an object with fields {sorted(keys)}")
    return x


def _dtype(name: Any, what: str) -> np.dtype:
    if not isinstance(name, str) or name not in _DTYPES:
        raise FormatError(f"{what} has an unknown dtype {name!r}")
    return _DTYPES[name]


def _shape(x: Any, what: str) -> tuple[int, ...]:
    if not isinstance(x, list) or len(x) > _MAX_NDIM:
        raise FormatError(f"{what} is not a shape")
    return tuple(_int(d, 0, 1 << 62, what) for d in x)


class _Parsed:
    """A checked file: its leaf entries and the byte range of each section."""

    def __init__(self, data: memoryview):
        if len(data) < _HEADER.size:
            raise FormatError(f"{len(data)} bytes is too short for a .jrm file")
        magic, version, flags, mlen, mcrc = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise FormatError("not a .jrm file (wrong magic bytes)")
        if version != VERSION:
            raise FormatError(f"unsupported .jrm format version {version} (this reads {VERSION})")
        if flags != 0:
            raise FormatError(f"unknown flags {flags:#x}")
        if mlen > len(data) - _HEADER.size:
            raise FormatError("manifest length runs past the end of the data")
        text = data[_HEADER.size : _HEADER.size + mlen]
        if zlib.crc32(text) != mcrc:
            raise FormatError("manifest CRC32 mismatch (the file is corrupted)")
        manifest = json.loads(
            bytes(text).decode("utf-8"),
            parse_constant=lambda c: (_ for _ in ()).throw(FormatError(f"bad number {c}")),
        )
        manifest = _obj(manifest, {"leaves", "sections"}, "manifest")
        secs = manifest["sections"]
        if not isinstance(secs, list):
            raise FormatError("manifest sections must be a list")
        pos = _HEADER.size + mlen
        self.sections: list[memoryview] = []
        for i, s in enumerate(secs):
            s = _obj(s, {"length", "crc32"}, f"section {i}")
            n = _int(s["length"], 0, len(data) - pos, f"section {i} length")
            self.sections.append(data[pos : pos + n])
            if zlib.crc32(self.sections[-1]) != _int(s["crc32"], 0, 2**32 - 1, "crc32"):
                raise FormatError(f"section {i} CRC32 mismatch (the file is corrupted)")
            pos += n
        if pos != len(data):
            raise FormatError(f"{len(data) - pos} trailing bytes after the last section")
        leaves = manifest["leaves"]
        if not isinstance(leaves, list) or len(leaves) > _MAX_LEAVES:
            raise FormatError("manifest leaves must be a list")
        self.budget = _FREE_ELEMENTS + _ELEMENTS_PER_BYTE * len(data)
        self.used_sections: set[int] = set()
        self.leaves = [self._leaf(e, i) for i, e in enumerate(leaves)]
        if len(self.used_sections) != len(self.sections):
            raise FormatError("the manifest has sections that no leaf uses")
        paths = [e["path"] for e in self.leaves]
        if len(set(paths)) != len(paths):
            raise FormatError("the manifest repeats a leaf path")

    def _spend(self, n: int, what: str) -> None:
        self.budget -= n
        if self.budget < 0:
            raise FormatError(f"{what} would decode to more elements than the file can hold")

    def _section(self, meta: dict, what: str) -> int:
        i = _int(meta["section"], 0, len(self.sections) - 1, f"{what} section")
        if i in self.used_sections:
            raise FormatError(f"{what} reuses section {i}")
        self.used_sections.add(i)
        return i

    def _raw(self, meta: Any, what: str) -> dict:
        meta = _obj(meta, {"codec", "dtype", "shape", "section"}, what)
        if meta["codec"] != "raw":
            raise FormatError(f"{what} must be raw")
        dtype = _dtype(meta["dtype"], what)
        shape = _shape(meta["shape"], what)
        i = self._section(meta, what)
        if len(self.sections[i]) != math.prod(shape) * dtype.itemsize:
            raise FormatError(f"{what}: section length disagrees with shape and dtype")
        return {"dtype": dtype, "shape": shape, "section": i}

    def _stream(self, meta: Any, limit: int, what: str) -> dict:
        meta = _obj(meta, {"codec", "count", "alphabet", "section"}, what)
        if meta["codec"] not in _streams.CODECS:
            raise FormatError(f"{what} has an unknown codec {meta['codec']!r}")
        top = 1 << 32 if meta["codec"] == "fixed" else _streams.MAX_ENTROPY_ALPHABET
        alphabet = _int(meta["alphabet"], 1, top, f"{what} alphabet")
        count = _int(meta["count"], 0, limit, f"{what} count")
        self._spend(count, what)
        return {
            "codec": meta["codec"],
            "count": count,
            "alphabet": alphabet,
            "section": self._section(meta, what),
        }

    def _leaf(self, e: Any, i: int) -> dict:
        e = _obj(e, {"path", "kind", "shape", "dtype"}, f"leaf {i}")
        if not isinstance(e["path"], str):
            raise FormatError(f"leaf {i} path is not a string")
        what = f"leaf {e['path']!r}"
        kind = e["kind"]
        shape = _shape(e["shape"], what)
        size = math.prod(shape)
        self._spend(size, what)
        out = {"path": e["path"], "kind": kind, "shape": shape, "dtype": _dtype(e["dtype"], what)}
        if kind == "raw":
            e = _obj(e, {"data"}, what)
            out["data"] = self._raw(e["data"], what)
            if out["data"]["shape"] != shape or out["data"]["dtype"] != out["dtype"]:
                raise FormatError(f"{what}: raw data disagrees with the leaf")
            return out
        if kind not in ("sparse", "codebook", "qarray"):
            raise FormatError(f"{what} has an unknown kind {kind!r}")
        sparse = "index" in e
        if kind == "sparse" and not sparse:
            raise FormatError(f"{what}: sparse leaf without indices")
        if sparse:
            e = _obj(e, {"index", "index_bits", "values"}, what)
            bits = _int(e["index_bits"], 1, _sparse.MAX_INDEX_BITS, f"{what} index_bits")
            out["index_bits"] = bits
            out["index"] = self._stream(e["index"], size, f"{what} index")
            if out["index"]["alphabet"] != 1 << bits:
                raise FormatError(f"{what}: index alphabet disagrees with index_bits")
            entries = out["index"]["count"]
            out["kept"] = _int(e.get("kept"), 0, entries, f"{what} kept")
        else:
            e = _obj(e, {"values"}, what)
            entries = size
        if kind == "sparse":
            out["values"] = self._raw(e["values"], f"{what} values")
            if out["values"]["shape"] != (entries,) or out["values"]["dtype"] != out["dtype"]:
                raise FormatError(f"{what}: values disagree with the indices")
            return out
        out["values"] = self._stream(e["values"], entries, f"{what} values")
        if out["values"]["count"] != entries:
            raise FormatError(f"{what}: value count disagrees with the indices")
        filler = e.get("filler") if sparse else None
        if filler is not None:
            filler = _int(filler, 1, out["values"]["alphabet"] - 1, f"{what} filler")
            if filler != out["values"]["alphabet"] - 1:
                raise FormatError(f"{what}: the filler must be the last symbol")
        out["filler"] = filler
        out["bits"] = _int(e.get("bits"), 1, 64, f"{what} bits")
        if kind == "codebook":
            e = _obj(e, {"centroids", "index_dtype"}, what)
            out["centroids"] = self._raw(e["centroids"], f"{what} centroids")
            out["index_dtype"] = _dtype(e["index_dtype"], what)
            k = math.prod(out["centroids"]["shape"])
            if len(out["centroids"]["shape"]) != 1 or k < 1:
                raise FormatError(f"{what}: centroids must be a non-empty vector")
            if out["values"]["alphabet"] - (filler is not None) > k:
                raise FormatError(f"{what}: indices may exceed the codebook")
            return out
        e = _obj(e, {"scale", "zero_point", "values_dtype", "offset", "axis"}, what)
        out["scale"] = self._raw(e["scale"], f"{what} scale")
        out["zero_point"] = self._raw(e["zero_point"], f"{what} zero_point")
        out["values_dtype"] = _dtype(e["values_dtype"], what)
        if out["values_dtype"].kind not in "iu" or out["values_dtype"].itemsize > 4:
            raise FormatError(f"{what}: values dtype must be a small integer")
        out["offset"] = _int(e["offset"], -(1 << 32), 1 << 32, f"{what} offset")
        axis = e["axis"]
        out["axis"] = None if axis is None else _int(axis, -_MAX_NDIM, _MAX_NDIM, f"{what} axis")
        info = np.iinfo(out["values_dtype"])
        top = out["offset"] + out["values"]["alphabet"] - 1 - (filler is not None)
        if out["offset"] < info.min or top > info.max:
            raise FormatError(f"{what}: values outside their dtype")
        return out


def parse(data: Any) -> _Parsed:
    """Checks ``data`` and returns its parsed manifest; raises FormatError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    try:
        return _Parsed(memoryview(data).cast("B"))
    except FormatError:
        raise
    except Exception as e:  # any stray failure of a malformed file is a format error
        raise FormatError(f"malformed .jrm data: {type(e).__name__}: {e}") from e


def _read_raw(p: _Parsed, meta: dict) -> np.ndarray:
    arr = np.frombuffer(p.sections[meta["section"]], meta["dtype"].newbyteorder("<"))
    return arr.astype(meta["dtype"]).reshape(meta["shape"])


def _kept(p: _Parsed, e: dict) -> tuple[np.ndarray | None, np.ndarray]:
    """(mask or None, flat positions of the stored entries) of a leaf."""
    size = math.prod(e["shape"])
    if "index" not in e:
        return None, np.arange(size)
    codes = _streams.decode(p.sections[e["index"]["section"]], e["index"])
    pos = _sparse.positions(codes, size)
    return np.zeros(size, bool), pos


def _to_output(x: Any) -> Any:
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if jax.dtypes.canonicalize_dtype(x.dtype) != x.dtype:
        return np.asarray(x)  # e.g. float64 without jax_enable_x64: keep numpy
    return jnp.asarray(x)


def _decode_leaf(p: _Parsed, e: dict) -> Any:
    kind, shape, size = e["kind"], e["shape"], math.prod(e["shape"])
    if kind == "raw":
        return _read_raw(p, e["data"])
    if kind == "sparse":
        _, pos = _kept(p, e)
        out = np.zeros(size, e["dtype"])
        out[pos] = _read_raw(p, e["values"])
        return out.reshape(shape)
    mask, pos = _kept(p, e)
    sym = _streams.decode(p.sections[e["values"]["section"]], e["values"]).astype(np.int64)
    if e["filler"] is not None:
        real = sym != e["filler"]
        pos, sym = pos[real], sym[real]
    if mask is not None and len(pos) != e["kept"]:
        raise FormatError(f"leaf {e['path']!r}: kept count disagrees with the entries")
    if mask is not None:
        mask[pos] = True
        mask = mask.reshape(shape)
    if kind == "codebook":
        idx = np.zeros(size, e["index_dtype"])
        idx[pos] = sym
        leaf = Codebook(
            indices=jnp.asarray(idx.reshape(shape)),
            centroids=jnp.asarray(_read_raw(p, e["centroids"])),
            mask=None if mask is None else jnp.asarray(mask),
            bits=e["bits"],
            dtype=e["dtype"].name,
        )
        return leaf.dequantize()
    vals = np.zeros(size, e["values_dtype"])
    vals[pos] = sym + e["offset"]
    leaf = QArray(
        values=jnp.asarray(vals.reshape(shape)),
        scale=jnp.asarray(_read_raw(p, e["scale"])),
        zero_point=jnp.asarray(_read_raw(p, e["zero_point"])),
        bits=e["bits"],
        axis=e["axis"],
        dtype=e["dtype"].name,
    )
    x = leaf.dequantize()
    if mask is not None:
        x = jnp.where(jnp.asarray(mask), x, jnp.zeros((), x.dtype))
    return x


def _nest(items: list[tuple[str, Any]]) -> Any:
    if len(items) == 1 and items[0][0] == "":
        return items[0][1]
    root: dict = {}
    for path, value in items:
        node = root
        parts = path.split("/")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise FormatError(f"path {path!r} runs through a leaf")
            node = child
        if parts[-1] in node:
            raise FormatError(f"path {path!r} repeats or contains another leaf")
        node[parts[-1]] = value
    return root


def decode(data: bytes | bytearray | memoryview, like: Any = None) -> Any:
    """Decodes ``.jrm`` bytes back into float (and other) arrays.

    Every quantized leaf comes back as exactly what ``quant.dequantize`` gives
    for the leaf that was encoded (bitwise), with masked-out entries exactly 0;
    every other leaf as it was stored. Arrays are ``jax.Array`` unless their
    dtype needs ``jax_enable_x64`` (then ``numpy`` arrays).

    Args:
      data: the bytes of a ``.jrm`` file.
      like: ``None`` to get a nested dict keyed by the path segments (the bare
        array for a single root leaf), or a pytree (Linen params, an
        ``nnx.State``, lists, ...) whose structure and paths the result takes.

    Returns:
      The decoded tree.

    Raises:
      FormatError: ``data`` is not a well-formed ``.jrm`` file (also for
        corruption, truncation, trailing bytes, or sizes beyond the limits).
      TypeError: ``data`` is not bytes.
      ValueError: ``like``'s leaf paths differ from the file's.
    """
    p = parse(data)
    try:
        items = [(e["path"], _to_output(_decode_leaf(p, e))) for e in p.leaves]
        if like is None:
            return _nest(items)
    except FormatError:
        raise
    except Exception as e:
        raise FormatError(f"malformed .jrm data: {type(e).__name__}: {e}") from e
    flat, treedef = jax.tree_util.tree_flatten_with_path(like, is_leaf=is_quantized)
    found = dict(items)
    want = [path_str(kp) for kp, _ in flat]
    missing = [q for q in want if q not in found]
    extra = sorted(set(found) - set(want))
    if missing or extra:
        raise ValueError(
            f"like does not match the file: missing in the file {missing[:5]}, "
            f"not in like {extra[:5]}"
        )
    return jax.tree_util.tree_unflatten(treedef, [found[q] for q in want])


def save(path: str | os.PathLike, tree: Any, **kwargs: Any) -> int:
    """Encodes ``tree`` and writes it to ``path`` atomically.

    The bytes go to a temporary file in the same directory, are flushed to
    disk, and replace ``path`` with ``os.replace``; if anything fails, no
    file (and no partial file) is left under ``path`` or beside it.

    Args:
      path: the file to write (conventionally ending in ``.jrm``).
      tree: the tree to encode.
      **kwargs: passed to [`encode`][jaxrm.coding.encode] (``masks``, ``entropy``, ``index_bits``).

    Returns:
      The number of bytes written.

    Raises:
      TypeError: as [`encode`][jaxrm.coding.encode] raises it.
      ValueError: as [`encode`][jaxrm.coding.encode] raises it.
      OSError: from the file system.
    """
    data = encode(tree, **kwargs)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".jrm-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return len(data)


def load(path: str | os.PathLike, like: Any = None) -> Any:
    """Reads a ``.jrm`` file written by [`save`][jaxrm.coding.save]; see
    [`decode`][jaxrm.coding.decode].

    Raises:
      FormatError: the file is not a well-formed ``.jrm`` file.
      OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read()
    return decode(data, like)
