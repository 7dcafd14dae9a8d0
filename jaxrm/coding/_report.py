"""Deep Compression's size tables (Tables 2-4) read from a real ``.jrm`` file."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxrm.coding import _format
from jaxrm.coding._bits import bit_width

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


def _fixed_bytes(stream: dict, bits: int | None = None) -> int:
    width = bits if bits is not None else bit_width(stream["alphabet"] - 1)
    return -(-stream["count"] * width // 8)


def _row(p: Any, e: dict) -> ReportRow:
    sec = lambda meta: len(p.sections[meta["section"]])
    size = math.prod(e["shape"])
    original = size * e["dtype"].itemsize
    if e["kind"] == "raw":
        n = sec(e["data"])
        bits = e["dtype"].itemsize * 8
        return ReportRow(e["path"], "raw", size, size, bits, bits, 0.0, 0.0, original, n, n)
    sparse = "index" in e
    kept = e["kept"] if sparse else size
    per = (lambda b: b / kept) if kept else (lambda b: 0.0)
    side = 0  # codebooks, scales and zero points: stored raw either way
    for key in ("centroids", "scale", "zero_point"):
        if key in e:
            side += sec(e[key])
    if e["kind"] == "sparse":
        v_pq = v = sec(e["values"])
    else:
        v_pq, v = _fixed_bytes(e["values"]), sec(e["values"])
    if sparse:
        i_pq, i = _fixed_bytes(e["index"]), sec(e["index"])
    else:
        i_pq = i = 0
    if e["kind"] == "sparse":
        vbits_pq = vbits = 8 * v
    else:
        vbits_pq = e["values"]["count"] * bit_width(e["values"]["alphabet"] - 1)
        vbits = 8 * v
    ibits_pq = e["index"]["count"] * e["index_bits"] if sparse else 0
    return ReportRow(
        path=e["path"],
        kind=e["kind"],
        weights=size,
        kept=kept,
        weight_bits_pq=per(vbits_pq),
        weight_bits_pqh=per(vbits),
        index_bits_pq=per(ibits_pq),
        index_bits_pqh=per(8 * i),
        original_bytes=original,
        bytes_pq=v_pq + i_pq + side,
        bytes=v + i + side,
    )


def report(tree_or_bytes: Any, masks: Any = None, **encode_kwargs: Any) -> Report:
    """Size report of a compressed model, in Deep Compression's table columns.

    Args:
      tree_or_bytes: ``.jrm`` bytes, or a tree that is first encoded with
        [`encode`][jaxrm.coding.encode] (with ``masks`` and ``encode_kwargs``).
      masks: masks for encoding a tree (see [`encode`][jaxrm.coding.encode]).
      **encode_kwargs: ``entropy`` and ``index_bits`` for encoding a tree.

    Returns:
      A [`Report`][jaxrm.coding.Report]; its total ``bytes`` equals the encoded file's size.

    Raises:
      FormatError: the bytes are not a well-formed ``.jrm`` file.
    """
    if isinstance(tree_or_bytes, bytes | bytearray | memoryview):
        if masks is not None or encode_kwargs:
            raise ValueError("masks and encoding options apply to a tree, not to bytes")
        data = tree_or_bytes
    else:
        data = _format.encode(tree_or_bytes, masks=masks, **encode_kwargs)
    p = _format.parse(data)
    rows = tuple(_row(p, e) for e in p.leaves)
    overhead = len(data) - sum(len(s) for s in p.sections)
    kept = sum(r.kept for r in rows)
    per = (lambda attr: sum(getattr(r, attr) * r.kept for r in rows) / kept) if kept else (
        lambda attr: 0.0
    )
    total = ReportRow(
        path="total",
        kind="",
        weights=sum(r.weights for r in rows),
        kept=kept,
        weight_bits_pq=per("weight_bits_pq"),
        weight_bits_pqh=per("weight_bits_pqh"),
        index_bits_pq=per("index_bits_pq"),
        index_bits_pqh=per("index_bits_pqh"),
        original_bytes=sum(r.original_bytes for r in rows),
        bytes_pq=sum(r.bytes_pq for r in rows) + overhead,
        bytes=sum(r.bytes for r in rows) + overhead,
    )
    return Report(rows=rows, total=total, overhead_bytes=overhead)
