"""Writing ``.jrm`` files: leaf records, and a writer that owns the sections and streams.

Small symbol runs (the index or value streams of small leaves) share one coded
stream per kind, so a small leaf costs a manifest record rather than a stream
with its own tables; all raw arrays (biases, centroids, scales) share one
section. The manifest is zlib-compressed when that is smaller.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

import jax
import numpy as np

from jaxrm import tree as jtree
from jaxrm.coding import _manifest as mf
from jaxrm.coding import _sparse, _streams
from jaxrm.coding._bits import bit_width
from jaxrm.coding._int4 import unpack_int4
from jaxrm.quant._types import Codebook, QArray, is_quantized
from jaxrm.tree import path_str

__all__ = ["encode"]

# Runs of at most this many symbols may share a stream with other small runs.
SHARE_MAX = 1 << 14
# Estimated cost of a stream of its own: manifest and section records, coder header.
_STREAM_BITS = 8 * 40
# A float leaf given without a mask is stored sparse when its exact +0.0
# entries are at least this fraction and sparse storage is estimated smaller.
_AUTO_SPARSE_ZEROS = 0.125


class _Writer:
    """Collects raw arrays and symbol runs; :meth:`finish` lays out sections and streams."""

    def __init__(self) -> None:
        self.raw_parts: list[bytes] = []
        self.raw_refs: list[dict] = []
        self.raw_length = 0
        self.runs: list[tuple[dict, np.ndarray, int, str, str]] = []

    def raw(self, arr: np.ndarray) -> dict:
        data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        ref = {"codec": "raw", "dtype": arr.dtype.name, "shape": list(arr.shape)}
        ref["offset"] = self.raw_length
        self.raw_parts.append(data)
        self.raw_refs.append(ref)
        self.raw_length += len(data)
        return ref

    def symbols(self, sym: np.ndarray, alphabet: int, codec: str, role: str) -> dict:
        """A placeholder record for symbols in ``[0, alphabet)``, filled by :meth:`finish`."""
        ref: dict = {}
        self.runs.append((ref, np.asarray(sym, np.int64).reshape(-1), alphabet, codec, role))
        return ref

    def _groups(self) -> list[list[int]]:
        """Runs coded together: small runs of one codec and role share a stream."""
        pools: dict[tuple, list[int]] = {}
        groups = []
        for i, (_, sym, alphabet, codec, role) in enumerate(self.runs):
            if len(sym) <= SHARE_MAX and alphabet <= _streams.MAX_ENTROPY_ALPHABET:
                width = bit_width(alphabet - 1) if codec == "fixed" else 0
                pools.setdefault((codec, role, width), []).append(i)
            else:
                groups.append([i])
        for (codec, _, _), members in pools.items():
            shared = members if codec == "fixed" else self._worth_sharing(members, codec)
            pooled = set(shared) if len(shared) > 1 else set()
            if pooled:
                groups.append(shared)
            groups.extend([i] for i in members if i not in pooled)
        return sorted(groups)

    def _worth_sharing(self, members: list[int], codec: str) -> list[int]:
        """Members whose symbols cost less under the pooled histogram than alone."""
        top = max(self.runs[i][2] for i in members)
        hists = [np.bincount(self.runs[i][1], minlength=top) for i in members]
        for _ in range(2):
            total = np.sum(hists, axis=0) if hists else np.zeros(top)
            if total.sum() == 0:
                return members
            logp = np.log2(np.maximum(total, 1) / total.sum())
            keep = []
            for i, h in zip(members, hists):
                alone = _streams.estimate_bits(h[: self.runs[i][2]], codec) + _STREAM_BITS
                if -(h * logp).sum() <= alone:
                    keep.append(i)
            if len(keep) == len(members):
                break
            members, hists = keep, [hists[members.index(i)] for i in keep]
        return members

    def finish(self, leaves: list[dict]) -> bytes:
        sections: list[bytes] = []
        streams = []
        for group in self._groups():
            sym = np.concatenate([self.runs[i][1] for i in group])
            alphabet = max(self.runs[i][2] for i in group)
            data, meta = _encode_stream(sym, alphabet, self.runs[group[0]][3])
            meta["section"] = len(sections)
            sections.append(data)
            start = 0
            for i in group:
                ref, run, run_alphabet = self.runs[i][:3]
                ref.update(stream=len(streams), start=start, count=len(run), alphabet=run_alphabet)
                start += len(run)
            streams.append(meta)
        if self.raw_refs:
            for ref in self.raw_refs:
                ref["section"] = len(sections)
            sections.append(b"".join(self.raw_parts))
        manifest = {
            "leaves": leaves,
            "streams": streams,
            "sections": [{"length": len(s), "crc32": zlib.crc32(s)} for s in sections],
        }
        text = json.dumps(manifest, separators=(",", ":"), allow_nan=False).encode()
        flags, stored = 0, text
        packed = zlib.compress(text, 9)
        if len(packed) < len(text) <= mf.MAX_MANIFEST_RATIO * len(packed):
            flags, stored = mf.FLAG_ZLIB, packed
        header = mf.HEADER.pack(mf.MAGIC, mf.VERSION, flags, len(stored), zlib.crc32(stored))
        return b"".join([header, stored, *sections])


def _encode_stream(sym: np.ndarray, alphabet: int, codec: str) -> tuple[bytes, dict]:
    data, meta = _streams.encode(sym, alphabet, codec)
    if meta["codec"] == "ans":  # rANS tables and lane states can cost more than they gain
        alt, alt_meta = _streams.encode(sym, alphabet, "huffman")
        if len(alt) <= len(data):
            return alt, alt_meta
    return data, meta


# ------------------------------------------------------------------ checks


def _dtype_name(dtype: Any, path: str, what: str = "leaf", allowed=None) -> str:
    name = np.dtype(dtype).name
    if name not in (allowed or mf.DTYPES):
        raise TypeError(f"{what} at {path!r} has dtype {name}, which a .jrm file cannot hold here")
    return name


def _check_int(x: Any, lo: int, hi: int, what: str, path: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int | np.integer):
        raise TypeError(f"{what} at {path!r} must be an int, got {x!r}")
    if not lo <= int(x) <= hi:
        raise ValueError(f"{what} at {path!r} must be in [{lo}, {hi}], got {x}")
    return int(x)


def _finite(arr: np.ndarray, what: str, path: str) -> np.ndarray:
    if not np.isfinite(arr.astype(np.float64)).all():
        raise ValueError(f"{what} at {path!r} holds NaN or Inf")
    return arr


# ------------------------------------------------------------------ leaves


def _choose_index_bits(gap: np.ndarray, value_counts, codec: str, raw_bits: int):
    """(index width, estimated bits) minimizing the size of index plus value streams."""
    if len(gap) == 0:
        return 1, 0.0
    top = max(1, min(_sparse.MAX_INDEX_BITS, bit_width(int(gap.max()) - 1)))
    best, best_cost = 1, math.inf
    for b in range(1, top + 1):
        fillers = int(((gap - 1) >> b).sum())
        idx = np.bincount((gap - 1) & ((1 << b) - 1), minlength=1 << b)
        idx[-1] += fillers
        cost = _estimate(idx, codec)
        if value_counts is None:
            cost += (len(gap) + fillers) * raw_bits
        else:
            counts = np.append(value_counts, fillers) if fillers else value_counts
            cost += _estimate(counts, codec)
        if cost < best_cost:
            best, best_cost = b, cost
    return best, best_cost


def _estimate(counts: np.ndarray, codec: str) -> float:
    est = _streams.estimate_bits(counts, codec)
    if codec == "ans":  # the writer falls back to Huffman where it is smaller
        est = min(est, _streams.estimate_bits(counts, "huffman"))
    return est


def _sparse_record(w: _Writer, mask, value_sym, alphabet, raw_values, codec, bits) -> dict:
    """Index stream plus value stream (symbols or raw) of the kept entries."""
    gap = _sparse.gaps(mask)
    if bits is None:
        counts = None if value_sym is None else np.bincount(value_sym, minlength=alphabet)
        raw_bits = 0 if raw_values is None else raw_values.dtype.itemsize * 8
        bits, _ = _choose_index_bits(gap, counts, codec, raw_bits)
    codes, real = _sparse.relative_indices(gap, bits)
    entry: dict = {"index_bits": bits, "kept": len(real)}
    entry["index"] = w.symbols(codes, 1 << bits, codec, "index")
    fillers = len(codes) > len(real)
    if value_sym is not None:
        sym = np.full(len(codes), alphabet, np.int64)
        sym[real] = value_sym
        entry["filler"] = alphabet if fillers else None
        entry["values"] = w.symbols(sym, alphabet + fillers, codec, "values")
    else:
        vals = np.zeros(len(codes), raw_values.dtype)  # fillers hold +0
        vals[real] = raw_values
        entry["values"] = w.raw(vals)
    return entry


def _combine(own: Any, mask: np.ndarray | None) -> np.ndarray | None:
    own = None if own is None else np.asarray(own, bool)
    if mask is None:
        return own
    return mask if own is None else own & mask


def _codebook(w: _Writer, path: str, leaf: Codebook, mask, codec: str, bits) -> dict:
    mask = _combine(leaf.mask, mask)
    idx = np.asarray(leaf.indices)
    cent = np.asarray(leaf.centroids)
    index_dtype = _dtype_name(idx.dtype, path, "Codebook indices", mf.INTS)
    _dtype_name(cent.dtype, path, "Codebook centroids", mf.FLOATS)
    nbits = _check_int(leaf.bits, 1, 16, "Codebook bits", path)
    k = int(cent.shape[-1]) if cent.ndim else 0
    if not mf.codebook_fits(cent.shape, idx.shape) or not 1 <= k <= 1 << nbits:
        raise ValueError(
            f"Codebook at {path!r} needs 1 to 2**bits centroids: shape (k,), or the "
            f"indices' rank plus k for one codebook per slice; got {cent.shape}"
        )
    if k - 1 > np.iinfo(idx.dtype).max:
        raise ValueError(f"Codebook at {path!r}: {k} centroids do not fit {index_dtype} indices")
    _finite(cent, "Codebook centroids", path)
    flat = idx.reshape(-1).astype(np.int64)
    kept = flat if mask is None else flat[mask.reshape(-1)]
    if kept.size and (kept.min() < 0 or kept.max() >= k):
        raise ValueError(f"Codebook at {path!r} has indices outside [0, {k})")
    entry = {
        "kind": "codebook",
        "shape": list(idx.shape),
        "dtype": _dtype_name(leaf.dtype, path, "Codebook", mf.FLOATS),
        "bits": nbits,
        "index_dtype": index_dtype,
        "centroids": w.raw(cent),
    }
    if mask is None:
        entry["values"] = w.symbols(kept, k, codec, "values")
    else:
        entry.update(_sparse_record(w, mask, kept, k, None, codec, bits))
    return entry


def _qarray(w: _Writer, path: str, leaf: QArray, mask, codec: str, bits) -> dict:
    mask = _combine(getattr(leaf, "mask", None), mask)
    vals = np.asarray(leaf.values)
    if not np.issubdtype(vals.dtype, np.integer) or vals.dtype.itemsize > 4:
        raise TypeError(f"QArray at {path!r} needs integer values of at most 32 bits")
    nbits = _check_int(leaf.bits, 1, 32, "QArray bits", path)
    packed = bool(getattr(leaf, "packed", False))
    if packed:
        vals = unpack_int4(vals)
    group_size = getattr(leaf, "group_size", None)
    if group_size is not None:
        group_size = _check_int(group_size, 1, max(vals.shape, default=1), "group_size", path)
    shape = tuple(vals.shape)
    parts = {}
    for name in ("scale", "zero_point"):
        arr = np.asarray(getattr(leaf, name))
        _dtype_name(arr.dtype, path, f"QArray {name}", mf.FLOATS)
        if not mf.broadcasts_into(arr.shape, shape, group_size):
            raise ValueError(
                f"QArray at {path!r}: {name} of shape {arr.shape} does not fit {shape}"
            )
        parts[name] = _finite(arr, f"QArray {name}", path)
    axis = leaf.axis
    if axis is not None:
        axis = _check_int(axis, -max(len(shape), 1), max(len(shape) - 1, 0), "QArray axis", path)
    flat = vals.reshape(-1).astype(np.int64)
    kept = flat if mask is None else flat[mask.reshape(-1)]
    offset = int(kept.min()) if kept.size else 0
    top = int(kept.max()) if kept.size else 0
    if offset < -(1 << (nbits - 1)) or top > (1 << nbits) - 1:
        raise ValueError(f"QArray at {path!r} has values outside {nbits} bits")
    alphabet = top - offset + 1
    entry = {
        "kind": "qarray",
        "shape": list(shape),
        "dtype": _dtype_name(leaf.dtype, path, "QArray", mf.FLOATS),
        "bits": nbits,
        "axis": axis,
        "values_dtype": _dtype_name(vals.dtype, path, "QArray values"),
        "offset": offset,
        **({"packed": True} if packed else {}),
        **({"group_size": group_size} if group_size is not None else {}),
        "scale": w.raw(parts["scale"]),
        "zero_point": w.raw(parts["zero_point"]),
    }
    if mask is None:
        entry["values"] = w.symbols(kept - offset, alphabet, codec, "values")
    else:
        entry.update(_sparse_record(w, mask, kept - offset, alphabet, None, codec, bits))
    return entry


def _zeros_mask(arr: np.ndarray, codec: str, bits) -> np.ndarray | None:
    """The mask of a float leaf's non-(+0.0) entries, if storing it sparse is smaller."""
    if arr.dtype.name not in mf.FLOATS or arr.size < 64:
        return None
    keep = (arr != 0) | np.signbit(arr)  # -0.0 and NaN stay stored: decoding is bitwise
    zeros = arr.size - int(np.count_nonzero(keep))
    if zeros < _AUTO_SPARSE_ZEROS * arr.size:
        return None
    width = arr.dtype.itemsize * 8
    gap = _sparse.gaps(keep)
    if bits is None:
        _, cost = _choose_index_bits(gap, None, codec, width)
    else:
        fillers = int(((gap - 1) >> bits).sum())
        cost = (len(gap) + fillers) * (bits + width)
    return keep if cost + _STREAM_BITS < arr.size * width else None


def _array(w: _Writer, path: str, leaf: Any, mask, codec: str, bits) -> dict:
    arr = np.asarray(leaf)
    name = _dtype_name(arr.dtype, path)
    if mask is None:
        mask = _zeros_mask(arr, codec, bits)
    if mask is None:
        return {"kind": "raw", "shape": list(arr.shape), "dtype": name, "data": w.raw(arr)}
    entry = {"kind": "sparse", "shape": list(arr.shape), "dtype": name}
    values = arr.reshape(-1)[mask.reshape(-1)]
    entry.update(_sparse_record(w, mask, None, 0, values, codec, bits))
    return entry


# ------------------------------------------------------------------ tree


def _flatten(tree: Any) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_quantized)
    out, seen = [], set()
    for kp, leaf in flat:
        path = mf.check_path(path_str(kp), ValueError, "leaf")
        if path in seen:
            raise ValueError(f"tree has two leaves at path {path!r}")
        seen.add(path)
        if isinstance(leaf, bool | int | float | np.generic):
            leaf = np.asarray(leaf)
        elif not (is_quantized(leaf) or isinstance(leaf, np.ndarray | jax.Array)):
            raise TypeError(f"leaf at {path!r} is a {type(leaf).__name__}, not an array")
        if len(leaf.shape) > mf.MAX_NDIM:
            raise ValueError(f"leaf at {path!r} has more than {mf.MAX_NDIM} dimensions")
        out.append((path, leaf))
    return out


def _check_mask(mask: Any, leaf: Any, path: str) -> np.ndarray | None:
    if mask is None:
        return None
    if not hasattr(mask, "dtype") or np.dtype(mask.dtype) != np.bool_:
        raise TypeError(f"masks at {path!r} must be a bool array or None")
    mask = np.asarray(mask)
    if mask.shape != tuple(leaf.shape):
        raise ValueError(f"masks at {path!r} has shape {mask.shape}, expected {tuple(leaf.shape)}")
    return mask


def _is_index_bits(x: Any) -> bool:
    return x is None or isinstance(x, int | np.integer)


def _is_entropy(x: Any) -> bool:
    return isinstance(x, str)


def _settings_of(tree, leaves, masks, entropy, index_bits):
    paths = [p for p, _ in leaves]
    items = [leaf for _, leaf in leaves]
    if masks is None:
        mask_list = [None] * len(leaves)
    else:
        mask_list = jtree.aligned(tree, masks, "masks", shapes=False, is_leaf=is_quantized)
    bits = jtree.resolve(
        index_bits, tree, argument="index_bits", is_scalar=_is_index_bits,
        is_leaf=is_quantized, default=None,
    )  # fmt: skip
    codecs = jtree.resolve(
        entropy, tree, argument="entropy", is_scalar=_is_entropy, is_leaf=is_quantized,
        default="huffman",
    )  # fmt: skip
    out = []
    for path, leaf, mask, b, e in zip(paths, items, mask_list, bits, codecs):
        if e not in _streams.ENTROPY_MODES:
            raise ValueError(f"entropy at {path!r} must be 'huffman', 'ans' or 'none', got {e!r}")
        if b is not None:
            b = _check_int(b, 1, _sparse.MAX_INDEX_BITS, "index_bits", path)
        out.append((path, leaf, _check_mask(mask, leaf, path), e, b))
    return out


def _write(plan: list[tuple]) -> bytes:
    w = _Writer()
    entries = []
    for path, leaf, mask, entropy, bits in plan:
        codec = _streams.ENTROPY_MODES[entropy]
        make = _array
        if is_quantized(leaf):
            make = _codebook if isinstance(leaf, Codebook) else _qarray
        entry = {"path": path}
        entry.update(make(w, path, leaf, mask, codec, bits))
        entries.append(entry)
    return w.finish(entries)


def encode(
    tree: Any,
    *,
    masks: Any = None,
    entropy: Any = "huffman",
    index_bits: Any = None,
) -> bytes:
    """Encodes a (pruned, quantized) parameter tree into ``.jrm`` bytes.

    Each leaf is stored by what it is:

    * ``quant.Codebook``: the codebook indices of the kept entries, entropy
      coded, plus the centroids; with a mask (its own, or from ``masks``) the
      kept entries are addressed by sparse relative indices.
    * ``quant.QArray``: its integer values (minus their minimum), entropy
      coded, plus scale and zero point; sparse indices where it has a mask
      (its own ``mask`` field, or one in ``masks``).
    * a float (or integer) array with a mask: sparse indices and the raw kept values.
    * a float array without a mask whose exact ``+0.0`` entries make sparse
      storage smaller (an eighth of them or more): stored sparse too, so a
      pruned tree passed without ``masks`` is not silently stored dense.
      Decoding gives the array back bitwise (``-0.0`` and NaN stay stored).
    * any other array: raw, in its dtype.

    Small leaves share their coded streams (one per kind of stream), so each
    costs a compressed manifest record of a few dozen bytes.

    Args:
      tree: a pytree of arrays, ``QArray`` and ``Codebook`` leaves.
      masks: ``None`` or a pytree of ``tree``'s structure (one entry per
        array, ``QArray`` or ``Codebook`` leaf) of ``bool`` masks (``False`` =
        pruned) or ``None`` for dense leaves. Pruned entries decode to 0.
      entropy: ``"huffman"`` (canonical Huffman), ``"ans"`` (interleaved
        rANS; a stream falls back to Huffman where that is smaller, and the
        file is never larger than with ``"huffman"``) or ``"none"``
        (fixed-width bit packing); or a per-leaf setting of these (a pytree,
        a callable ``(path, leaf)``, or ``[(regex, mode), ...]`` rules).
      index_bits: bits per relative index: ``None`` picks, per leaf, the width
        that minimizes the leaf's estimated size (exact for ``"none"``); an
        int in ``[1, 16]`` for every leaf; or a per-leaf setting of ints and
        ``None`` (a pytree of ``tree``'s structure, a callable, rules).

    Returns:
      The file contents.

    Raises:
      ValueError: bad ``entropy``/``index_bits``, ``masks``/settings not
        matching the tree, or a quantized leaf whose fields disagree (indices
        past the codebook, values outside ``bits``, a scale that does not
        broadcast to the leaf, NaN/Inf centroids or scales); the message
        names the leaf path.
      TypeError: a leaf, mask or setting of the wrong type.
    """
    if isinstance(entropy, str) and entropy not in _streams.ENTROPY_MODES:
        raise ValueError(f"entropy must be 'huffman', 'ans' or 'none', got {entropy!r}")
    leaves = _flatten(tree)
    plan = _settings_of(tree, leaves, masks, entropy, index_bits)
    data = _write(plan)
    if any(e == "ans" for *_, e, _ in plan):  # never larger than the same tree under Huffman
        plain = _write([(*p[:3], "huffman" if p[3] == "ans" else p[3], p[4]) for p in plan])
        if len(plain) < len(data):
            return plain
    return data
