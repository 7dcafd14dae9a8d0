"""Density per leaf and in total, for masks or for parameters with zeros."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxrm import tree as jtree

__all__ = ["Summary", "SummaryRow", "summary"]


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """One leaf of a [`Summary`][jaxrm.prune.Summary].

    Attributes:
      path: the leaf path.
      shape: the leaf shape.
      size: the number of entries.
      nonzero: kept entries (``True`` in a mask, nonzero in parameters).
    """

    path: str
    shape: tuple[int, ...]
    size: int
    nonzero: int

    @property
    def density(self) -> float:
        """Kept fraction, ``nonzero / size`` (1.0 for an empty leaf)."""
        return self.nonzero / self.size if self.size else 1.0

    @property
    def sparsity(self) -> float:
        """Pruned fraction, ``1 - density``."""
        return 1.0 - self.density


@dataclasses.dataclass(frozen=True)
class Summary:
    """Per-leaf and total density; ``print(summary)`` shows a table.

    Attributes:
      rows: one [`SummaryRow`][jaxrm.prune.SummaryRow] per array leaf, in flattening order.
    """

    rows: tuple[SummaryRow, ...]

    @property
    def size(self) -> int:
        """Entries over all rows."""
        return sum(r.size for r in self.rows)

    @property
    def nonzero(self) -> int:
        """Kept entries over all rows."""
        return sum(r.nonzero for r in self.rows)

    @property
    def density(self) -> float:
        """Total kept fraction."""
        return self.nonzero / self.size if self.size else 1.0

    @property
    def sparsity(self) -> float:
        """Total pruned fraction."""
        return 1.0 - self.density

    def __str__(self) -> str:
        header = ("leaf", "shape", "size", "kept", "density")
        body = [
            (r.path or "(root)", str(r.shape), str(r.size), str(r.nonzero), f"{r.density:.4f}")
            for r in self.rows
        ]
        body.append(("total", "", str(self.size), str(self.nonzero), f"{self.density:.4f}"))
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

        def line(row):
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
            return "  ".join(cells)

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(header), rule, *map(line, body[:-1]), rule, line(body[-1])])


def summary(tree: Any, *, where: jtree.Where = jtree.arrays) -> Summary:
    """Counts kept entries per leaf: ``True`` in masks, nonzero in parameters.

    Args:
      tree: a mask pytree (``bool`` arrays, ``None`` leaves are skipped) or a
        parameter pytree whose pruned entries are zero.
      where: the leaves to count (default: every array leaf).

    Returns:
      A [`Summary`][jaxrm.prune.Summary] with ``rows``, ``size``, ``nonzero``, ``density`` and
      ``sparsity``; ``str()`` of it is a table.

    Raises:
      ValueError: ``where`` selects nothing.
    """
    jtree.selected(tree, where)
    chosen = jtree.select(tree, where)
    picks = [c for _, c in jtree.leaves_with_paths(chosen)]
    rows = []
    for (path, leaf), c in zip(jtree.leaves_with_paths(tree), picks):
        if not c or not jtree.is_array(leaf):
            continue
        arr = np.asarray(leaf)
        rows.append(SummaryRow(path, tuple(arr.shape), int(arr.size), int(np.count_nonzero(arr))))
    return Summary(tuple(rows))
