"""Resetting the wrapped optimizer's moments at regrown connections.

A sparse-training method that activates a connection starts its weight at 0
and must start its optimizer history at 0 too (RigL, Evci et al. 2020), or a
stale Adam ``mu``/``nu`` or SGD momentum would move it at once. The moments
are found by structure, not by type: every subtree of the wrapped state with
the parameters' tree structure and the same shapes at the sparse leaves
(Adam's ``mu`` and ``nu``, SGD's ``trace``, the state of ``optax.chain``,
``inject_hyperparams``, ``masked``, ...) is zeroed where a connection was grown.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["reset"]


def reset(inner_state: Any, treedef: Any, shapes: list, grown: list) -> Any:
    """Zeroes ``inner_state``'s params-shaped subtrees where ``grown`` is True.

    Args:
      inner_state: the wrapped optimizer's state.
      treedef: the parameters' tree structure.
      shapes: the shape of each parameter leaf, in flattening order.
      grown: a ``bool`` array per parameter leaf (``None`` where nothing can grow).
    """

    def is_moment(x) -> bool:
        if jax.tree_util.tree_structure(x) != treedef:
            return False
        leaves = jax.tree_util.tree_leaves(x)
        return all(
            g is None or tuple(getattr(v, "shape", ())) == tuple(s)
            for v, s, g in zip(leaves, shapes, grown)
        )

    def zero(x):
        if not is_moment(x):
            return x
        leaves = jax.tree_util.tree_leaves(x)
        out = [v if g is None else jnp.where(g, jnp.zeros((), v.dtype), v)
               for v, g in zip(leaves, grown)]
        return jax.tree_util.tree_unflatten(treedef, out)

    return jax.tree_util.tree_map(zero, inner_state, is_leaf=is_moment)
