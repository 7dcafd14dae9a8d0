"""Writing ``.jrm`` files: leaf records, and a writer that owns the sections and streams.

Small symbol runs (the index or value streams of small leaves) share one coded
stream per kind, so a small leaf costs a manifest record rather than a stream
with its own tables; all raw arrays (biases, centroids, scales) share one
section. The manifest is zlib-compressed when that is smaller.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import jax
import numpy as np

from jaxrm import tree as jtree
from jaxrm.coding import _leaves, _sparse, _streams
from jaxrm.coding import _records as mf
from jaxrm.coding._bits import bit_width
from jaxrm.coding._leaves import STREAM_BITS, check_int
from jaxrm.quant._types import Codebook, is_quantized
from jaxrm.tree import path_str

__all__ = ["encode"]

# Runs of at most this many symbols may share a stream with other small runs.
SHARE_MAX = 1 << 14


class _Writer:
    """Collects raw arrays and symbol runs; ``finish`` lays out sections and streams."""

    def __init__(self) -> None:
        self.raw_parts: list[bytes] = []
        self.raw_refs: list[dict] = []
        self.raw_length = 0
        self.runs: list[tuple[dict, np.ndarray, int, str, str]] = []
        # codecs whose size estimates chose a leaf's layout (index width, pieces)
        self.estimated: set[str] = set()
        self._cached_groups: list[list[int]] | None = None

    def raw(self, arr: np.ndarray) -> dict:
        data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        ref = {"codec": "raw", "dtype": arr.dtype.name, "shape": list(arr.shape)}
        ref["offset"] = self.raw_length
        self.raw_parts.append(data)
        self.raw_refs.append(ref)
        self.raw_length += len(data)
        return ref

    def symbols(self, sym: np.ndarray, alphabet: int, codec: str, role: str,
                bounds: np.ndarray | None = None) -> dict | list[dict]:
        """A placeholder record for symbols in ``[0, alphabet)``, filled by ``finish``.

        With ``bounds`` (increasing cut points), one run per piece: each may get
        a stream, and so a code table, of its own.
        """
        sym = np.asarray(sym, np.int64).reshape(-1)
        if bounds is not None:
            return [self.symbols(part, alphabet, codec, role) for part in np.split(sym, bounds)]
        ref: dict = {}
        self.runs.append((ref, sym, alphabet, codec, role))
        self._cached_groups = None
        return ref

    def recode(self, old: str, new: str) -> None:
        """Gives the runs of codec ``old`` codec ``new`` (the leaves' layout stays)."""
        self.runs = [(*r[:3], new if r[3] == old else r[3], r[4]) for r in self.runs]
        self._cached_groups = None

    def _groups(self) -> list[list[int]]:
        """Runs coded together: small runs of one codec and role share a stream."""
        if self._cached_groups is None:
            self._cached_groups = self._find_groups()
        return self._cached_groups

    def _find_groups(self) -> list[list[int]]:
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
        hists = np.stack([np.bincount(self.runs[i][1], minlength=top) for i in members])
        alone = _streams.estimate_rows(hists, [self.runs[i][2] for i in members], codec)
        alone += STREAM_BITS
        keep = np.ones(len(members), bool)
        for _ in range(2):
            total = hists[keep].sum(axis=0)
            if total.sum() == 0:
                break
            logp = np.log2(np.maximum(total, 1) / total.sum())
            kept = keep & (-(hists @ logp) <= alone)
            if np.array_equal(kept, keep):
                break
            keep = kept
        return [i for i, k in zip(members, keep) if k]

    def floor_bytes(self) -> int:
        """Bytes `finish` writes at least: header, raw section and every stream's
        section bounded from below by its histogram (the manifest counted as empty)."""
        total = mf.HEADER.size + self.raw_length
        for group in self._groups():
            sym = np.concatenate([self.runs[i][1] for i in group])
            alphabet = max(self.runs[i][2] for i in group)
            total += _streams.floor_bytes(sym, alphabet, self.runs[group[0]][3])
        return total

    def finish(self, leaves: list[dict]) -> bytes:
        sections: list[bytes] = []
        streams = []
        for group in self._groups():
            sym = np.concatenate([self.runs[i][1] for i in group])
            alphabet = max(self.runs[i][2] for i in group)
            data, meta = _streams.encode(sym, alphabet, self.runs[group[0]][3])
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
            b = check_int(b, 1, _sparse.MAX_INDEX_BITS, "index_bits", path)
        out.append((path, leaf, _check_mask(mask, leaf, path), e, b))
    return out


def _planned(plan: list[tuple]) -> tuple[_Writer, list[dict]]:
    """The records of ``plan``'s leaves and a writer holding their runs (nothing coded)."""
    w = _Writer()
    entries = []
    for path, leaf, mask, entropy, bits in plan:
        codec = _streams.ENTROPY_MODES[entropy]
        make = _leaves.array
        if is_quantized(leaf):
            make = _leaves.codebook if isinstance(leaf, Codebook) else _leaves.qarray
        entry = {"path": path}
        entry.update(make(w, path, leaf, mask, codec, bits))
        entries.append(entry)
    return w, entries


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
    w, entries = _planned(plan)
    data = w.finish(entries)
    if any(e == "ans" for *_, e, _ in plan):  # never larger than the same tree under Huffman
        if "ans" in w.estimated:  # layouts chosen by rANS estimates: plan Huffman's own
            w, entries = _planned([(*p[:3], "huffman" if p[3] == "ans" else p[3], p[4])
                                   for p in plan])
        else:  # Huffman's plan is this one: its records are rewritten by `finish`
            w.recode("ans", "huffman")
        if len(data) <= w.floor_bytes():  # the Huffman file cannot be smaller: not written
            return data
        plain = w.finish(entries)
        if len(plain) < len(data):
            return plain
    return data
