"""Trained quantization: split a quantized tree into what an optimizer updates and the rest.

Integer indices, masks and ``QArray`` grids cannot be differentiated or updated
by optax, so fine-tuning works on the float part only::

    train, frozen = partition(qparams)
    grads = jax.grad(lambda t: loss(dequantize(combine(t, frozen))))(train)
    updates, opt_state = optimizer.update(grads, opt_state, train)
    train = optax.apply_updates(train, updates)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrm import tree as jtree
from jaxrm.quant._types import Codebook, QArray, is_quantized


def _is_float_array(x: Any) -> bool:
    return jtree.is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact)


def _split(x: Any, centroids_only: bool) -> tuple[Any, Any]:
    if isinstance(x, Codebook):
        return (
            x.replace(indices=None, mask=None),
            x.replace(centroids=None),
        )
    if isinstance(x, QArray):
        return None, x
    if not centroids_only and _is_float_array(x):
        return x, None
    return None, x


def trainable(tree: Any, *, centroids_only: bool = False) -> Any:
    """Returns a bool pytree of ``tree``'s structure: which leaves an optimizer may update.

    ``True`` for the ``centroids`` of each ``Codebook`` and (unless
    ``centroids_only``) for other floating array leaves such as biases;
    ``False`` for integer and bool leaves (indices, masks) and for every field
    of a ``QArray`` (its grid is fixed). Usable as the mask of ``optax.masked``
    when the gradient tree comes from [`partition`][jaxrm.quant.partition]'s float part.

    Args:
      tree: a pytree, typically from ``kmeans`` or ``uniform``.
      centroids_only: mark only codebook centroids as trainable.

    Returns:
      A pytree of Python bools with ``tree``'s full structure (quantized
      leaves are expanded into their fields; a ``Codebook``'s absent mask stays
      ``None``).
    """

    def visit(x: Any) -> Any:
        if isinstance(x, Codebook):
            return x.replace(
                indices=False, centroids=True, mask=None if x.mask is None else False
            )
        if isinstance(x, QArray):
            return x.replace(values=False, scale=False, zero_point=False)
        return bool(not centroids_only and _is_float_array(x))

    return jax.tree.map(visit, tree, is_leaf=is_quantized)


def partition(tree: Any, *, centroids_only: bool = False) -> tuple[Any, Any]:
    """Splits ``tree`` into ``(train, frozen)`` for fine-tuning with optax.

    ``train`` holds the leaves marked by [`trainable`][jaxrm.quant.trainable] (codebook centroids
    and, unless ``centroids_only``, other float leaves) and ``None`` elsewhere;
    ``frozen`` holds everything else (indices, masks, ``QArray`` leaves,
    integer leaves). Differentiate and optimize ``train``; put the two back
    together with [`combine`][jaxrm.quant.combine]. Both halves keep ``tree``'s structure, so
    they pass through ``jit`` and orbax.

    Args:
      tree: a pytree, typically from ``kmeans`` or ``uniform``.
      centroids_only: put only codebook centroids in ``train``.

    Returns:
      ``(train, frozen)``.
    """
    pairs = jax.tree.map(lambda x: _split(x, centroids_only), tree, is_leaf=is_quantized)
    # Walk ``tree``'s own structure so tuples inside it are not mistaken for pairs.
    treedef = jax.tree.structure(tree, is_leaf=is_quantized)
    flat = treedef.flatten_up_to(pairs)
    train = treedef.unflatten([p[0] for p in flat])
    frozen = treedef.unflatten([p[1] for p in flat])
    return train, frozen


def combine(train: Any, frozen: Any) -> Any:
    """Inverse of [`partition`][jaxrm.quant.partition]: fills the ``None`` leaves of ``train`` from
    ``frozen``.

    Args:
      train: the first output of [`partition`][jaxrm.quant.partition] (possibly updated).
      frozen: the second output of [`partition`][jaxrm.quant.partition].

    Returns:
      A pytree of the original structure.
    """
    return jax.tree.map(
        lambda a, b: b if a is None else a, train, frozen, is_leaf=lambda x: x is None
    )
