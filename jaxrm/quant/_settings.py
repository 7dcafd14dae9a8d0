"""Per-leaf settings and leaf layouts as the quantizers read them.

Both come from ``jaxrm.tree`` ([jaxrm.tree.resolve][] and
[jaxrm.tree.layouts][]), with quantized leaves kept whole, so every wing reads
them the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from jaxrm import tree as jtree


def _is_quantized(x: Any) -> bool:
    from jaxrm.quant._types import is_quantized

    return is_quantized(x)


def leaf_paths(tree: Any) -> list[tuple[str, Any]]:
    """``(path, leaf)`` in flattening order, quantized leaves kept whole."""
    return jtree.leaves_with_paths(tree, is_leaf=_is_quantized)


def resolve(
    setting: Any, tree: Any, *, argument: str, is_scalar: Callable[[Any], bool],
    only: set[str] | None = None,
) -> dict[str, Any]:
    """One value per leaf path of ``tree`` (of the paths in ``only`` if given)."""
    flat = leaf_paths(tree)
    mask = None if only is None else [p in only for p, _ in flat]
    values = jtree.resolve(
        setting, tree, argument=argument, is_scalar=is_scalar, is_leaf=_is_quantized, only=mask
    )
    return {p: v for (p, _), v in zip(flat, values)}


@dataclasses.dataclass(frozen=True)
class Axes:
    """What a quantizer needs of a leaf's layout (axes non-negative)."""

    stacked: tuple[int, ...] = ()
    out: tuple[int, ...] = ()
    contract: tuple[int, ...] = ()
    kind: str = "other"

    @property
    def group_axis(self) -> int | None:
        """The axis group-wise scales split: the last contracted axis, or an
        embedding's feature axis (what its attend/logits matmul contracts)."""
        if self.contract:
            return self.contract[-1]
        if self.kind == "embedding" and self.out:
            return self.out[-1]
        return None

    def channels(self, path: str, ndim: int) -> tuple[int, ...]:
        """The axes one scale per output channel keeps (``axis="channel"``).

        Dense and conv kernels: all their output axes (an attention kernel
        ``(emb, heads, head_dim)`` gets one scale per ``(head, head_dim)``,
        reducing over the contracted ``emb`` only). Embedding tables: their
        rows (a lookup returns a row; a tied output projection contracts a
        row's features), not the feature axis the layout names as output.

        Raises:
          ValueError: the layout names no output channel for the leaf.
        """
        if self.kind == "embedding":
            rows = tuple(a for a in range(ndim) if a not in self.stacked + self.out)
            if rows:
                return rows
        elif self.out:
            return self.out
        raise ValueError(
            f"axis='channel' at leaf {path!r}: its layout names no output channel "
            f"(kind {self.kind!r}); give it an int axis or None"
        )


def axes_of(tree: Any, stacked: Any, paths: set[str]) -> dict[str, Axes]:
    """Stacked, output and contracted axes of the leaves at ``paths``.

    Leaves outside ``paths`` are left out of the layout inference, so a
    scalar ``stacked`` applies to the selected leaves only (a 1-D bias beside a
    stacked kernel is not asked for a stacked axis).
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_quantized)
    kept = [leaf if jtree.path_str(kp) in paths else None for kp, leaf in flat]
    sub = jax.tree_util.tree_unflatten(treedef, kept)
    found = jtree.layouts(sub, stacked=stacked, is_leaf=_is_quantized)
    names = [p for p, _ in leaf_paths(sub)]
    return {
        p: Axes(tuple(lay.stacked), tuple(lay.out), tuple(lay.contract), lay.kind)
        for p, lay in zip(names, found)
        if lay is not None
    }
