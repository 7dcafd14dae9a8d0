"""Sparse relative indices (Deep Compression, Section 2 and Figure 2).

The kept entries of a flattened leaf are stored by the gap to the previous
kept entry (the first gap counts from position -1). With ``b`` index bits a
gap ``d`` in ``1..2**b`` is written as the code ``d - 1``; a longer gap first
inserts *filler* entries every ``2**b`` positions (code ``2**b - 1``), each
with a zero value, exactly as the paper's figure pads with zeros.
"""

from __future__ import annotations

import numpy as np

from jaxrm.coding._bits import FormatError

__all__ = ["MAX_INDEX_BITS", "gaps", "positions", "relative_indices"]

MAX_INDEX_BITS = 16


def gaps(mask: np.ndarray) -> np.ndarray:
    """Gaps between the kept (True) entries of the flattened ``mask`` (int64)."""
    kept = np.flatnonzero(np.asarray(mask).reshape(-1))
    return np.diff(kept, prepend=-1)


def relative_indices(gap: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Index codes with fillers for ``gap`` at ``bits`` bits per index.

    Args:
      gap: gaps between kept entries, as returned by `gaps`.
      bits: the index width.

    Returns:
      ``(codes, real)``: the code of every stored entry and the positions (in
      the stored sequence) of the real kept entries; the others are fillers.
    """
    fillers = (gap - 1) >> bits
    real = np.cumsum(fillers + 1) - 1
    codes = np.full(int(real[-1]) + 1 if len(real) else 0, (1 << bits) - 1, np.int64)
    codes[real] = (gap - 1) & ((1 << bits) - 1)
    return codes, real


def positions(codes: np.ndarray, size: int) -> np.ndarray:
    """Flat positions of stored entries from their index codes.

    Raises:
      FormatError: a position falls outside a leaf of ``size`` elements.
    """
    pos = np.cumsum(codes.astype(np.int64) + 1) - 1
    if len(pos) and pos[-1] >= size:
        raise FormatError(f"relative indices run past the leaf's {size} elements")
    return pos
