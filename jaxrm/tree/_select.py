"""``where`` selection by role, and element and byte counts.

A ``where`` argument chooses the leaves a transform touches:

* ``None``: the default, [jaxrm.tree.weights][]: matmul, convolution and
  embedding weights by role, never biases, norm scales, position embeddings
  or cls tokens, whatever their ``ndim``;
* a string: a regular expression searched (``re.search``) in the leaf's path;
* a callable ``(path, leaf) -> bool``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxrm.tree._flat import Flat
from jaxrm.tree._frameworks import EQX_NORM_MODULES, EQX_WEIGHT_MODULES, leaf_info
from jaxrm.tree._paths import compile_path_regex, is_array, leaves_with_paths, paths

__all__ = [
    "Where",
    "arrays",
    "count",
    "map_selected",
    "nbytes",
    "predicate",
    "select",
    "selected",
    "weights",
]

Where = None | str | Callable[[str, Any], bool]

# Leaf names that never hold a matmul/conv weight (biases, norm parameters and
# statistics, learned scalars).
_NOT_WEIGHT_NAMES = frozenset(
    {"bias", "scale", "gamma", "beta", "mean", "var", "running_mean", "running_var",
     "offset", "temperature", "logit_scale"}
)
# Path segments marking position embeddings and class/register tokens.
_NOT_WEIGHT_SEGMENT = re.compile(
    r"^(pos(ition)?(_?(emb|embed|embedding|embeddings|embs|enc|encoding)|embed_input)?"
    r"|posembed\w*|wpe|cls|cls_token|class_token|registers?|reg_tokens?|dist_token)$",
    re.IGNORECASE,
)
# Module names of norm layers, for a `weight` leaf in a plain (e.g. torch-style) dict.
_NORM_MODULE = re.compile(r"(norm|^ln(_?\w+)?$|^bn\d*$)", re.IGNORECASE)


def _is_float_array(leaf: Any) -> bool:
    return is_array(leaf) and jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating)


def is_weight_name(path: str) -> bool:
    """Whether a leaf's path allows it to be a weight (see [jaxrm.tree.weights][])."""
    segments = path.split("/")
    name = segments[-1]
    if name.lower() in _NOT_WEIGHT_NAMES:
        return False
    if any(_NOT_WEIGHT_SEGMENT.match(s) for s in segments):
        return False
    if name == "weight" and len(segments) > 1 and _NORM_MODULE.search(segments[-2]):
        return False
    return True


def weights(path: str, leaf: Any) -> bool:
    """The default selection: matmul, convolution and embedding weights, by role.

    A floating array with ``ndim >= 2`` is a weight unless its name says
    otherwise: biases (``bias``), norm parameters (``scale``, ``gamma``,
    ``beta``, a ``weight`` under a norm module), batch statistics, position
    embeddings (``pos``, ``pos_embedding``, ``posembed_*``, ``wpe``, ...) and cls or
    register tokens are left out, stacked ``(L, d)`` or head-shaped
    ``(heads, head_dim)`` ones included. Flax ``kernel``/``embedding`` and
    Equinox/PyTorch ``weight`` leaves are weights.

    Called by [jaxrm.tree.select][] with the whole tree (``where=None``), the
    Equinox layer holding each leaf is also read: the ``weight`` of
    ``Linear``/``Conv``/``Embedding`` is selected, that of
    ``LayerNorm``/``RMSNorm``/``GroupNorm``/``BatchNorm`` never.

    Args:
      path: the leaf path.
      leaf: the leaf.

    Returns:
      Whether the leaf is a weight.
    """
    return _is_float_array(leaf) and len(leaf.shape) >= 2 and is_weight_name(path)


def arrays(path: str, leaf: Any) -> bool:
    """Selects every array leaf (use as ``where=jaxrm.tree.arrays``)."""
    del path
    return is_array(leaf)


def _weights_in(tree: Any, is_leaf=None) -> Callable[[str, Any], bool]:
    """[weights][jaxrm.tree.weights] with the Equinox layer types of ``tree`` taken into account."""
    info = tree.info if isinstance(tree, Flat) else leaf_info(tree, is_leaf)
    if not any(i.module for i in info.values()):
        return weights

    def pred(path: str, leaf: Any) -> bool:
        i = info.get(path)
        if i is not None and i.module is not None:
            if i.field != "weight" or i.module in EQX_NORM_MODULES:
                return False
            if i.module in EQX_WEIGHT_MODULES:
                return _is_float_array(leaf) and len(leaf.shape) >= 2
        return weights(path, leaf)

    return pred


def predicate(
    where: Where,
    tree: Any = None,
    argument: str = "where",
    is_leaf: Callable[[Any], bool] | None = None,
) -> Callable[[str, Any], bool]:
    """Turns a ``where`` argument into a predicate ``(path, leaf) -> bool``.

    Args:
      where: ``None`` or [jaxrm.tree.weights][] (the role-based default), a
        regular expression string, or a callable.
      tree: the tree (or its [jaxrm.tree.Flat][]) the predicate will be
        applied to; with the default it lets Equinox layer types refine the roles.
      argument: the argument's name, for error messages.
      is_leaf: the flattening's ``is_leaf``, used when walking ``tree``.

    Raises:
      TypeError: ``where`` is none of the accepted kinds.
      ValueError: ``where`` is an invalid regular expression.
    """
    if where is None or where is weights:
        return weights if tree is None else _weights_in(tree, is_leaf)
    if isinstance(where, str):
        pattern = compile_path_regex(where, argument)
        return lambda path, leaf: is_array(leaf) and pattern.search(path) is not None
    if callable(where):
        return where
    raise TypeError(
        f"{argument} must be None, a regular expression string or a callable "
        f"(path, leaf) -> bool, got {type(where).__name__}"
    )


def select(tree: Any, where: Where = None) -> Any:
    """Returns a pytree of Python bools: which leaves ``where`` chooses.

    Args:
      tree: any pytree.
      where: ``None`` ([jaxrm.tree.weights][]), a regular expression searched
        in each leaf's path, or a callable ``(path, leaf) -> bool``.

    Returns:
      A pytree of ``tree``'s structure with ``True``/``False`` leaves.

    Raises:
      TypeError: ``where`` is none of the accepted kinds.
      ValueError: ``where`` is an invalid regular expression.
    """
    pred = predicate(where, tree)
    treedef = jax.tree_util.tree_structure(tree)
    chosen = [bool(pred(p, leaf)) for p, leaf in leaves_with_paths(tree)]
    return jax.tree_util.tree_unflatten(treedef, chosen)


def selected(tree: Any, where: Where = None, *, argument: str = "where") -> list[str]:
    """Returns the paths ``where`` chooses, raising if it chooses none.

    Raises:
      ValueError: nothing is selected (the message lists the tree's paths).
    """
    pred = predicate(where, tree, argument)
    chosen = [p for p, leaf in leaves_with_paths(tree) if pred(p, leaf)]
    if not chosen:
        shown = ", ".join(paths(tree)[:12]) or "(no leaves)"
        raise ValueError(f"{argument}={where!r} selects no leaf; the leaves are: {shown}")
    return chosen


def map_selected(
    fn: Callable[[str, Any], Any],
    tree: Any,
    where: Where = None,
    *,
    otherwise: Callable[[str, Any], Any] | None = None,
) -> Any:
    """Maps ``fn(path, leaf)`` over the selected leaves; others pass through.

    Args:
      fn: called with the path string and the leaf of every selected leaf.
      tree: any pytree.
      where: the selection (see [jaxrm.tree.select][]).
      otherwise: called on unselected leaves instead of leaving them unchanged
        (e.g. ``lambda p, x: None`` to build a mask tree).

    Returns:
      A pytree of ``tree``'s structure.
    """
    pred = predicate(where, tree)
    treedef = jax.tree_util.tree_structure(tree)
    out = []
    for p, leaf in leaves_with_paths(tree):
        if pred(p, leaf):
            out.append(fn(p, leaf))
        else:
            out.append(leaf if otherwise is None else otherwise(p, leaf))
    return jax.tree_util.tree_unflatten(treedef, out)


def count(tree: Any, where: Where = None) -> int:
    """Returns the number of elements in the leaves ``where`` selects.

    With the default ``where=None`` only weights are counted; pass
    ``where=jaxrm.tree.arrays`` to count every parameter, biases included.
    """
    pred = predicate(where, tree)
    return int(
        sum(int(np.prod(leaf.shape)) for p, leaf in leaves_with_paths(tree) if pred(p, leaf))
    )


def nbytes(tree: Any) -> int:
    """Returns the bytes held by all array leaves of ``tree``.

    Quantized leaves count their stored fields (integer values, scales,
    codebooks), so this is the in-memory size of a compressed tree.
    """
    total = 0
    for _, leaf in leaves_with_paths(tree):
        if is_array(leaf):
            total += int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return total
