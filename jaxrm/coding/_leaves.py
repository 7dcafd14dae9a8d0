"""The record of each leaf: what is stored for a ``Codebook``, a ``QArray`` or an array.

Each builder checks the leaf exactly as the parser will check the file (the
same limits, from ``_records``), so whatever ``encode`` writes ``decode``
reads, and hands its arrays and symbol runs to the writer.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from jaxrm.coding import _records as mf
from jaxrm.coding import _sparse, _streams
from jaxrm.coding._bits import bit_width
from jaxrm.coding._int4 import unpack_int4
from jaxrm.quant._types import Codebook, QArray

__all__ = ["STREAM_BITS", "array", "check_int", "codebook", "qarray"]

# Estimated cost of a stream of its own: manifest and section records, coder header.
STREAM_BITS = 8 * 40
# Per-slice streams only where slices hold this many symbols on average
# (smaller runs share streams with other small runs anyway).
MIN_PIECE = 1 << 14
# Sparse leaves with this many entries choose their index width by the coder's estimate.
_EXACT_FROM = 1 << 12
# A float leaf given without a mask is stored sparse when its exact +0.0
# entries are at least this fraction and sparse storage is estimated smaller.
_AUTO_SPARSE_ZEROS = 0.125


# ------------------------------------------------------------------ checks


def _dtype_name(dtype: Any, path: str, what: str = "leaf", allowed=None) -> str:
    name = np.dtype(dtype).name
    if name not in (allowed or mf.DTYPES):
        raise TypeError(f"{what} at {path!r} has dtype {name}, which a .jrm file cannot hold here")
    return name


def check_int(x: Any, lo: int, hi: int, what: str, path: str) -> int:
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


def _plogp(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x * np.log2(np.where(x > 0, x, 1.0))


def _scores(v, c, top: int, value_counts, codec: str, raw_bits: int, n: int) -> np.ndarray:
    """Estimated bits of index plus value streams at every width ``1..top``, in one pass.

    Entropy plus a table cost per stream (exact sizes for fixed-width coding);
    ``v``, ``c``: the distinct gaps minus 1 and their counts, ``n`` the gaps.
    """
    bs = np.arange(1, top + 1)
    fillers = (v[None, :] >> bs[:, None]) @ c  # per width
    entries = n + fillers
    if codec == "fixed":
        if value_counts is None:
            return entries * (bs + raw_bits)
        width = np.asarray([bit_width(len(value_counts) - (f == 0)) for f in fillers])
        return entries * (bs + width)
    off = (1 << bs) - 2  # segment of width b in one histogram of all widths
    keys = off[:, None] + (v[None, :] & ((1 << bs[:, None]) - 1))
    hist = np.bincount(keys.reshape(-1), weights=np.tile(c, top).astype(np.float64),
                       minlength=(1 << (top + 1)) - 2)
    hist[off + (1 << bs) - 1] += fillers
    used = np.add.reduceat((hist > 0).astype(np.int64), off)
    index = _stream_score(_plogp(entries) - np.add.reduceat(_plogp(hist), off), entries,
                          np.minimum((1 << bs) * 5, used * (bs + 5)) + 80, codec)
    if value_counts is None:
        return index + entries * raw_bits
    vc = value_counts[value_counts > 0]
    h = _plogp(entries) - float(_plogp(vc).sum()) - _plogp(fillers)
    extra = (fillers > 0).astype(np.int64)  # the filler symbol
    alphabet = len(value_counts) + extra
    width = np.asarray([bit_width(a - 1) for a in alphabet.tolist()])
    table = np.minimum(alphabet * 5, (len(vc) + extra) * (width + 5)) + 80
    return index + _stream_score(h, entries, table, codec)


def _stream_score(entropy, n, table, codec: str):
    """A stream's estimated bits from its entropy, length and table bits (as `_estimate`)."""
    huffman = np.maximum(entropy, n) + table  # a Huffman code spends at least a bit a symbol
    if codec == "huffman":
        return huffman
    return np.minimum(entropy * 1.004 + table * 3, huffman)  # rANS, or Huffman where smaller


def _choose_index_bits(gap: np.ndarray, value_counts, codec: str, raw_bits: int):
    """(index width, estimated bits) minimizing the size of index plus value streams.

    All widths are scored at once by the streams' entropy and table sizes
    (`_scores`; exact for fixed-width coding). For streams of at least
    ``_EXACT_FROM`` entries, the best width by that score and its neighbours
    are then scored by the coder's own estimate (a Huffman code's exact
    cost), which decides; below that the few bytes at stake do not pay for it.
    """
    if len(gap) == 0:
        return 1, 0.0
    v, c = np.unique(gap - 1, return_counts=True)  # distinct gaps: at most sqrt(2 * size)
    top = max(1, min(_sparse.MAX_INDEX_BITS, bit_width(int(v[-1]))))
    scores = _scores(v, c, top, value_counts, codec, raw_bits, len(gap))
    b0 = int(np.argmin(scores)) + 1
    if codec == "fixed" or len(gap) < _EXACT_FROM:
        return b0, float(scores[b0 - 1])
    best, best_cost = b0, math.inf
    for b in range(max(1, b0 - 1), min(top, b0 + 1) + 1):
        fillers = int((c * (v >> b)).sum())
        idx = np.bincount(v & ((1 << b) - 1), weights=c, minlength=1 << b).astype(np.int64)
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
    return _streams.estimate_bits(counts, codec, or_huffman=codec == "ans")


def slice_entries(centroids: tuple[int, ...], shape: tuple[int, ...]) -> int | None:
    """Entries of each slice with a codebook of its own (consecutive in C order), or None.

    Centroids ``(L, 1, 1, k)`` for a ``(L, m, n)`` leaf: ``m * n``; the slices
    run over the leading axes up to the last one the centroids vary along.
    """
    axes = [d for d, c in enumerate(centroids[:-1]) if c > 1]
    return math.prod(shape[axes[-1] + 1 :]) if axes else None


def _pieces(w, sym: np.ndarray, alphabet: int, bounds: np.ndarray, codec: str):
    """``bounds`` if coding each piece of ``sym`` apart is estimated smaller, else None.

    Different slices (layers of a scanned stack) may use their symbols very
    differently; a code table per slice then pays for its stream's overhead.
    """
    bounds = np.unique(bounds[(bounds > 0) & (bounds < len(sym))])
    if len(bounds) == 0 or len(sym) < (len(bounds) + 1) * MIN_PIECE:
        return None
    if len(bounds) + 1 > mf.MAX_PIECES:
        return None
    w.estimated.add(codec)
    edges = [0, *bounds.tolist(), len(sym)]
    hists = [np.bincount(sym[a:b], minlength=alphabet) for a, b in itertools.pairwise(edges)]
    pooled = _estimate(np.sum(hists, axis=0), codec)
    split = sum(_estimate(h, codec) for h in hists) + len(bounds) * STREAM_BITS
    return bounds if split < pooled else None


def _sparse_record(w, mask, value_sym, alphabet, raw_values, codec, bits, per=None) -> dict:
    """Index stream plus value stream (symbols or raw) of the kept entries.

    ``per``: entries of each slice with a codebook of its own, whose streams
    may then be cut at the slices' boundaries (`_pieces`).
    """
    gap = _sparse.gaps(mask)
    if bits is None:
        counts = None if value_sym is None else np.bincount(value_sym, minlength=alphabet)
        raw_bits = 0 if raw_values is None else raw_values.dtype.itemsize * 8
        w.estimated.add(codec)
        bits, _ = _choose_index_bits(gap, counts, codec, raw_bits)
    codes, real = _sparse.relative_indices(gap, bits)
    bounds = None
    if per is not None and len(codes) >= 2 * MIN_PIECE:
        pos = np.cumsum(codes + 1) - 1  # each stored entry's flat position
        bounds = np.searchsorted(pos, np.arange(per, mask.size, per))
    entry: dict = {"index_bits": bits, "kept": len(real)}
    cut = None if bounds is None else _pieces(w, codes, 1 << bits, bounds, codec)
    entry["index"] = w.symbols(codes, 1 << bits, codec, "index", cut)
    fillers = len(codes) > len(real)
    if value_sym is not None:
        sym = np.full(len(codes), alphabet, np.int64)
        sym[real] = value_sym
        entry["filler"] = alphabet if fillers else None
        cut = None if bounds is None else _pieces(w, sym, alphabet + fillers, bounds, codec)
        entry["values"] = w.symbols(sym, alphabet + fillers, codec, "values", cut)
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


def codebook(w, path: str, leaf: Codebook, mask, codec: str, bits) -> dict:
    mask = _combine(leaf.mask, mask)
    idx = np.asarray(leaf.indices)
    cent = np.asarray(leaf.centroids)
    index_dtype = _dtype_name(idx.dtype, path, "Codebook indices", mf.INTS)
    _dtype_name(cent.dtype, path, "Codebook centroids", mf.FLOATS)
    nbits = check_int(leaf.bits, 1, 16, "Codebook bits", path)
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
    per = slice_entries(cent.shape, idx.shape)
    if mask is None:
        cut = None if per is None else _pieces(w, kept, k, np.arange(per, kept.size, per), codec)
        entry["values"] = w.symbols(kept, k, codec, "values", cut)
    else:
        entry.update(_sparse_record(w, mask, kept, k, None, codec, bits, per))
    return entry


def qarray(w, path: str, leaf: QArray, mask, codec: str, bits) -> dict:
    mask = _combine(getattr(leaf, "mask", None), mask)
    vals = np.asarray(leaf.values)
    if not np.issubdtype(vals.dtype, np.integer) or vals.dtype.itemsize > 4:
        raise TypeError(f"QArray at {path!r} needs integer values of at most 32 bits")
    nbits = check_int(leaf.bits, 1, 32, "QArray bits", path)
    packed = bool(getattr(leaf, "packed", False))
    if packed:
        vals = unpack_int4(vals)
    group_size = getattr(leaf, "group_size", None)
    if group_size is not None:
        group_size = check_int(group_size, 1, max(vals.shape, default=1), "group_size", path)
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
        axis = check_int(axis, -max(len(shape), 1), max(len(shape) - 1, 0), "QArray axis", path)
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


def _zeros_mask(w, arr: np.ndarray, codec: str, bits) -> np.ndarray | None:
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
        w.estimated.add(codec)
        _, cost = _choose_index_bits(gap, None, codec, width)
    else:
        fillers = int(((gap - 1) >> bits).sum())
        cost = (len(gap) + fillers) * (bits + width)
    return keep if cost + STREAM_BITS < arr.size * width else None


def array(w, path: str, leaf: Any, mask, codec: str, bits) -> dict:
    arr = np.asarray(leaf)
    name = _dtype_name(arr.dtype, path)
    if mask is None:
        mask = _zeros_mask(w, arr, codec, bits)
    if mask is None:
        return {"kind": "raw", "shape": list(arr.shape), "dtype": name, "data": w.raw(arr)}
    entry = {"kind": "sparse", "shape": list(arr.shape), "dtype": name}
    values = arr.reshape(-1)[mask.reshape(-1)]
    entry.update(_sparse_record(w, mask, None, 0, values, codec, bits))
    return entry
