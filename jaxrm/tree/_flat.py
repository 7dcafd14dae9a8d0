"""``Flat``: a tree flattened once, with paths and framework facts, for every helper to share."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax

from jaxrm.tree._frameworks import LeafInfo, leaf_info
from jaxrm.tree._paths import path_str

__all__ = ["Flat", "flatten"]


@dataclasses.dataclass(frozen=True, eq=False)
class Flat:
    """A pytree flattened once: paths, leaves and structure.

    [jaxrm.tree.resolve][], [jaxrm.tree.layouts][] and
    [jaxrm.tree.predicate][] accept a ``Flat`` in place of the tree, so a
    transform that needs all three walks the tree one time.

    Attributes:
      tree: the original tree.
      treedef: its structure (flattened with ``is_leaf``).
      paths: the leaf paths, in flattening order.
      leaves: the leaves, in flattening order.
      is_leaf: the ``is_leaf`` used.
    """

    tree: Any
    treedef: Any
    paths: tuple[str, ...]
    leaves: tuple
    is_leaf: Callable[[Any], bool] | None = None

    @functools.cached_property
    def info(self) -> dict[str, LeafInfo]:
        """What Equinox layers and Flax boxes in the tree say about each leaf (computed once)."""
        return leaf_info(self.tree, self.is_leaf)

    def items(self) -> list[tuple[str, Any]]:
        """``[(path, leaf), ...]`` in flattening order."""
        return list(zip(self.paths, self.leaves))

    def unflatten(self, values: Any) -> Any:
        """A tree of this structure holding ``values`` (one per leaf, ``None`` allowed)."""
        return jax.tree_util.tree_unflatten(self.treedef, list(values))

    def __len__(self) -> int:
        return len(self.leaves)


def flatten(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> Flat:
    """Flattens ``tree`` once into a [jaxrm.tree.Flat][] (a ``Flat`` is returned as is)."""
    if isinstance(tree, Flat):
        return tree
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return Flat(
        tree, treedef, tuple(path_str(kp) for kp, _ in pairs), tuple(x for _, x in pairs), is_leaf
    )
