"""Lining up a per-leaf tree (masks, gradients, sparsities) with the parameters."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxrm import tree as jtree


def aligned(reference: Any, other: Any, argument: str, *, shapes: bool = True) -> list:
    """``other``'s entry for each leaf of ``reference``, in ``reference``'s flattening order.

    Entries are matched by leaf path, so containers may differ (an NNX
    ``State`` of ``Param`` variables against one of plain arrays), and
    ``None`` entries of ``other`` where ``reference`` has no leaf (the
    ``None`` fields of an ``eqx.filter``-ed module) are allowed.

    Raises:
      ValueError: a leaf of ``reference`` has no entry, ``other`` has an
        extra non-``None`` entry, or (with ``shapes``) an array entry's shape
        differs; the message names ``argument`` and the leaf path.
    """
    ref = jtree.leaves_with_paths(reference)
    oth = jtree.leaves_with_paths(other, keep_none=True)
    ref_paths = [p for p, _ in ref]
    if [p for p, _ in oth] == ref_paths:
        values = [v for _, v in oth]
    else:
        by_path: dict[str, Any] = {}
        for p, v in oth:
            by_path.setdefault(p, v)
        known = set(ref_paths)
        missing = [p for p in ref_paths if p not in by_path]
        extra = [p for p, v in oth if p not in known and v is not None]
        if missing or extra:
            detail = []
            if missing:
                detail.append(f"missing leaves {missing[:5]}")
            if extra:
                detail.append(f"unexpected leaves {extra[:5]}")
            raise ValueError(
                f"{argument} does not have the structure of the parameters: "
                + "; ".join(detail)
            )
        values = [by_path[p] for p in ref_paths]
    if shapes:
        for (p, r), v in zip(ref, values):
            if v is not None and jtree.is_array(v) and tuple(v.shape) != tuple(np.shape(r)):
                raise ValueError(
                    f"{argument} at leaf {p!r} has shape {tuple(v.shape)}, "
                    f"expected {tuple(np.shape(r))}"
                )
    return values
