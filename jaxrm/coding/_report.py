"""Deep Compression's size tables (Tables 2-4) read from a real ``.jrm`` file.

The report parses and checks the file exactly as ``decode`` does (the same
manifest parser and stream decoders), so it never prints numbers of a file
that ``decode`` would refuse.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxrm import tree as jtree
from jaxrm.coding import _decode, _encode
from jaxrm.coding import _records as mf
from jaxrm.coding._bits import FormatError, bit_width
from jaxrm.coding._manifest import parse
from jaxrm.quant._types import is_quantized

__all__ = ["Report", "ReportRow", "report"]


@dataclasses.dataclass(frozen=True)
class ReportRow:
    """One leaf (or the total) in the columns of Deep Compression's tables.

    The bit columns are per *kept* weight, as in the paper; "P+Q" is the size
    with fixed-width packing of the same index and value streams, "P+Q+H" the
    size actually stored (entropy coded, tables included).

    Attributes:
      path: the leaf path (``"total"`` for the total row).
      kind: how the leaf is stored: ``raw``, ``sparse``, ``codebook``, ``qarray``.
      weights: number of entries of the leaf.
      kept: number of entries kept (not pruned).
      weight_bits_pq: value bits per kept weight at fixed width.
      weight_bits_pqh: value bits per kept weight as stored.
      index_bits_pq: relative-index bits per kept weight at fixed width.
      index_bits_pqh: relative-index bits per kept weight as stored.
      original_bytes: bytes of the uncompressed leaf in its dtype.
      bytes_pq: bytes with fixed-width streams (codebooks and scales included).
      bytes: bytes actually stored for the leaf.
    """

    path: str
    kind: str
    weights: int
    kept: int
    weight_bits_pq: float
    weight_bits_pqh: float
    index_bits_pq: float
    index_bits_pqh: float
    original_bytes: int
    bytes_pq: int
    bytes: int

    @property
    def density(self) -> float:
        """Fraction of weights kept (the paper's "Weights%")."""
        return self.kept / self.weights if self.weights else 1.0

    @property
    def rate_pq(self) -> float:
        """Compressed / original size with pruning and quantization."""
        return self.bytes_pq / self.original_bytes if self.original_bytes else 0.0

    @property
    def rate_pqh(self) -> float:
        """Compressed / original size with Huffman (or ANS) coding too."""
        return self.bytes / self.original_bytes if self.original_bytes else 0.0


@dataclasses.dataclass(frozen=True)
class Report:
    """Per-leaf rows and the total; ``str()`` is a markdown table.

    Attributes:
      rows: one [`ReportRow`][jaxrm.coding.ReportRow] per leaf, in file order.
      total: the sums; ``total.bytes`` is the file size (header and manifest
        included, as ``overhead_bytes``).
      overhead_bytes: bytes of the header and manifest.
    """

    rows: tuple[ReportRow, ...]
    total: ReportRow
    overhead_bytes: int

    def to_markdown(self) -> str:
        """The table in markdown, columns as in Deep Compression's Table 2/3."""
        head = (
            "| Layer | #Weights | Weights% (P) | Weight bits (P+Q) | Weight bits (P+Q+H) "
            "| Index bits (P+Q) | Index bits (P+Q+H) | Compress rate (P+Q) "
            "| Compress rate (P+Q+H) | Bytes |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        )

        def line(r: ReportRow) -> str:
            return (
                f"| {r.path} | {r.weights:,} | {100 * r.density:.1f}% "
                f"| {r.weight_bits_pq:.2f} | {r.weight_bits_pqh:.2f} "
                f"| {r.index_bits_pq:.2f} | {r.index_bits_pqh:.2f} "
                f"| {100 * r.rate_pq:.2f}% | {100 * r.rate_pqh:.2f}% | {r.bytes:,} |"
            )

        return head + "\n".join(line(r) for r in (*self.rows, self.total)) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()


def _fixed_bits(run: mf.Run) -> int:
    return run.count * bit_width(run.alphabet - 1)


class _Sizes:
    """Stored bytes of each run and raw array; runs of a shared stream get its bytes pro rata."""

    def __init__(self, m: mf.Manifest):
        self.m = m

    def run(self, run: mf.Run) -> float:
        total = 0.0
        for r in mf.pieces_of(run):
            s = self.m.streams[r.stream]
            total += len(self.m.sections[s.section]) * (r.count / s.count) if s.count else 0.0
        return total

    def raw(self, r: mf.Raw | None) -> int:
        return 0 if r is None else r.nbytes


def _row(z: _Sizes, e: mf.Leaf, kept: int, path: str | None = None, share: float = 1.0):
    """The row of leaf ``e`` (or the ``share`` of it that one stacked slice holds)."""
    weights = e.size if path is None else round(e.size * share)
    original = weights * e.dtype.itemsize
    if isinstance(e, mf.RawLeaf):
        n = round(z.raw(e.data) * share)
        bits = e.dtype.itemsize * 8
        return ReportRow(path or e.path, "raw", weights, weights, bits, bits, 0.0, 0.0,
                         original, n, n)  # fmt: skip
    sp = e.sparse
    per = (lambda b: b / kept) if kept else (lambda b: 0.0)
    side = sum(z.raw(getattr(e, k, None)) for k in ("centroids", "scale", "zero_point")) * share
    if isinstance(e, mf.SparseLeaf):
        v_pq = v = z.raw(e.values) * share
        vbits_pq = vbits = 8 * v
    else:
        v_pq, v = _fixed_bits(e.values) / 8 * share, z.run(e.values) * share
        vbits_pq, vbits = _fixed_bits(e.values) * share, 8 * v
    i_pq = i = ibits_pq = 0.0
    if sp is not None:
        i_pq, i = _fixed_bits(sp.index) / 8 * share, z.run(sp.index) * share
        ibits_pq = sp.entries * sp.index_bits * share
    return ReportRow(
        path=path or e.path,
        kind=e.kind,
        weights=weights,
        kept=kept,
        weight_bits_pq=per(vbits_pq),
        weight_bits_pqh=per(vbits),
        index_bits_pq=per(ibits_pq),
        index_bits_pqh=per(8 * i),
        original_bytes=original,
        bytes_pq=round(-(-v_pq // 1) + -(-i_pq // 1) + side),
        bytes=round(v + i + side),
    )


def _slices(e: mf.Leaf, parts: _decode.Parts, axis: int) -> list[tuple[str, int, float]]:
    """(path, kept, share of the stored entries) of each slice along the stacked ``axis``."""
    shape = e.shape
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"stacked axis {axis} is out of range for the leaf {e.path!r} {shape}")
    axis %= len(shape)
    n = shape[axis]
    inner = int(np.prod(shape[axis + 1 :]))
    if parts.positions is None:
        kept = [e.size // n] * n
    else:
        kept = np.bincount((parts.positions // inner) % n, minlength=n).tolist()
    return [(f"{e.path}[{i}]", int(k), 1.0 / n) for i, k in enumerate(kept)]


def _stacked_axes(stacked: Any, tree: Any, m: mf.Manifest) -> list[int | None]:
    """The stacked axis of each leaf (``None``: one row), from the tree's layouts or by path."""
    if tree is not None:
        if stacked is None:
            return [None] * len(m.leaves)
        found = jtree.layouts(tree, stacked=stacked, is_leaf=is_quantized)
        return [lay.stacked[0] if lay is not None and lay.stacked else None for lay in found]
    paths = [e.path for e in m.leaves]
    if stacked is None or isinstance(stacked, int):
        return [stacked] * len(paths)
    if isinstance(stacked, dict):
        return [stacked.get(p) for p in paths]
    if callable(stacked):
        return [stacked(p, e) for p, e in zip(paths, m.leaves)]
    rules = jtree.Rules(stacked, "stacked")
    return [None if (i := rules.find(p)) is None else rules[i][1] for p in paths]


def report(
    tree_or_bytes: Any,
    masks: Any = None,
    *,
    stacked: Any = None,
    max_elements: int = mf.DEFAULT_MAX_ELEMENTS,
    **encode_kwargs: Any,
) -> Report:
    """Size report of a compressed model, in Deep Compression's table columns.

    Args:
      tree_or_bytes: ``.jrm`` bytes, or a tree that is first encoded with
        [jaxrm.coding.encode][] (with ``masks`` and ``encode_kwargs``).
      masks: masks for encoding a tree (see [jaxrm.coding.encode][]).
      stacked: rows per stacked slice: a per-leaf setting of the stacked axis
        (an int or ``None``; a pytree, callable or ``[(regex, axis), ...]``
        rules; for bytes also a ``{path: axis}`` dict). A stacked leaf gives
        one row per slice (``"path[i]"``) with its exact weights and kept
        counts; its stored bytes are apportioned by the slice's share of the
        leaf (one stream holds all slices).
      max_elements: the decode limit the bytes are checked against.
      **encode_kwargs: ``entropy`` and ``index_bits`` for encoding a tree.

    Returns:
      A [jaxrm.coding.Report][]; its total ``bytes`` equals the encoded file's size.

    Raises:
      FormatError: the bytes are not a well-formed ``.jrm`` file (checked as
        [jaxrm.coding.decode][] checks it, streams included).
    """
    tree = None
    if isinstance(tree_or_bytes, bytes | bytearray | memoryview):
        if masks is not None or encode_kwargs:
            raise ValueError("masks and encoding options apply to a tree, not to bytes")
        data = tree_or_bytes
    else:
        tree = tree_or_bytes
        data = _encode.encode(tree, masks=masks, **encode_kwargs)
    m = parse(data, max_elements=max_elements)
    axes = _stacked_axes(stacked, tree, m)
    reader, sizes = _decode.Reader(m), _Sizes(m)
    rows: list[ReportRow] = []
    for e, axis in zip(m.leaves, axes):
        try:
            parts = reader.parts(e)
        except (FormatError, MemoryError):
            raise
        except Exception as err:
            raise FormatError(f"malformed .jrm data: {type(err).__name__}: {err}") from err
        kept = e.size if parts.positions is None else len(parts.positions)
        if isinstance(e, mf.SparseLeaf):
            kept = e.sparse.kept
        if axis is None or not e.shape:
            rows.append(_row(sizes, e, kept))
        else:
            slices = _slices(e, parts, axis)
            rows.extend(_row(sizes, e, k, path, share) for path, k, share in slices)
    rows_t = tuple(rows)
    stored = sum(r.bytes for r in rows_t)
    overhead = len(data) - stored
    kept = sum(r.kept for r in rows_t)
    per = (lambda attr: sum(getattr(r, attr) * r.kept for r in rows_t) / kept) if kept else (
        lambda attr: 0.0
    )
    total = ReportRow(
        path="total",
        kind="",
        weights=sum(r.weights for r in rows_t),
        kept=kept,
        weight_bits_pq=per("weight_bits_pq"),
        weight_bits_pqh=per("weight_bits_pqh"),
        index_bits_pq=per("index_bits_pq"),
        index_bits_pqh=per("index_bits_pqh"),
        original_bytes=sum(r.original_bytes for r in rows_t),
        bytes_pq=sum(r.bytes_pq for r in rows_t) + overhead,
        bytes=len(data),
    )
    return Report(rows=rows_t, total=total, overhead_bytes=overhead)
