"""Importance scores: a pytree of the parameters' structure, higher = more important.

Floating array leaves get a score; other leaves (integer counters, ``None``)
pass through unchanged, so a ``where`` that picks them is caught by
[`jaxrm.prune.masks`][jaxrm.prune.masks].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import _checks
from jaxrm import tree as jtree
from jaxrm.tree import aligned

__all__ = ["magnitude", "random", "saliency"]


def _is_float_array(leaf: Any) -> bool:
    return jtree.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.floating)


def magnitude(params: Any) -> Any:
    """Magnitude scores ``|w|`` (Han et al. 2015; Zhu & Gupta 2017).

    Args:
      params: any parameter pytree.

    Returns:
      A pytree of ``params``' structure: ``|w|`` for floating leaves, other
      leaves unchanged.
    """
    return jax.tree.map(lambda x: _abs(x) if _is_float_array(x) else x, params)


def _abs(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return jax.device_put(np.abs(x))  # jnp.abs would compile a program per shape
    return jnp.abs(x)


def saliency(params: Any, grads: Any) -> Any:
    """Connection saliency ``|w * g|`` (SNIP, Lee et al. 2019).

    Args:
      params: any parameter pytree.
      grads: gradients of a loss with respect to ``params`` (same structure
        and shapes).

    Returns:
      A pytree of ``params``' structure: ``|w * g|`` for floating leaves, other
      leaves unchanged.

    Raises:
      ValueError: ``grads`` does not match ``params`` (names the leaf path).
    """
    g_leaves = aligned(params, grads, "grads")
    p_leaves = jtree.leaves_with_paths(params)
    out = []
    for (path, p), g in zip(p_leaves, g_leaves):
        if _is_float_array(p):
            if g is None or not jtree.is_array(g):
                raise ValueError(f"grads has no array at leaf {path!r}")
            out.append(jnp.abs(p * g))
        else:
            out.append(p)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), out)


def random(key: jax.Array, params: Any) -> Any:
    """Uniform random scores in ``[0, 1)``: random pruning, a common baseline.

    Args:
      key: a JAX PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``).
      params: any parameter pytree.

    Returns:
      A pytree of ``params``' structure: float32 uniform scores of each floating
      leaf's shape (an independent stream per leaf), other leaves unchanged.

    Raises:
      TypeError: ``key`` is not a PRNG key.
    """
    _checks.prng_key(key)  # raises TypeError; the key itself is used as given
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out = [
        jax.random.uniform(jax.random.fold_in(key, i), x.shape, jnp.float32)
        if _is_float_array(x)
        else x
        for i, x in enumerate(leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)
