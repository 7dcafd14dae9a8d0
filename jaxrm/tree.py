"""Leaf paths, ``where`` selection, and byte and parameter counts for any pytree.

Every transform in jaxrm names leaves by their *path*: the keys from the root to
the leaf joined by ``/`` (``"Dense_0/kernel"``, ``"layers/3/attn/q"``). The
``.value`` attribute of a Flax NNX variable is dropped, so a Linen ``params``
dict and the ``nnx.State`` of the same network give the same paths.

A ``where`` argument chooses the leaves a transform touches:

* ``None``: the default, [`weights`][jaxrm.tree.weights] (floating arrays with ``ndim >= 2``);
* a string: a regular expression searched (``re.search``) in the leaf's path;
* a callable ``(path, leaf) -> bool``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

__all__ = [
    "Where",
    "aligned",
    "arrays",
    "check_matches",
    "count",
    "is_array",
    "leaves_with_paths",
    "map_selected",
    "nbytes",
    "path_str",
    "paths",
    "select",
    "selected",
    "weights",
]

Where = None | str | Callable[[str, Any], bool]


def path_str(key_path: Iterable[Any]) -> str:
    """Returns the ``/``-joined string of a JAX key path.

    Dict keys, attribute names, sequence indices and flattened indices all
    become path segments; a trailing ``.value`` (Flax NNX variables) is dropped.

    Args:
      key_path: a key path as given by ``jax.tree_util.tree_flatten_with_path``.

    Returns:
      The path string, e.g. ``"Dense_0/kernel"``; ``""`` for the root.
    """
    parts = []
    key_path = tuple(key_path)
    for i, k in enumerate(key_path):
        if isinstance(k, jax.tree_util.GetAttrKey):
            if k.name == "value" and i == len(key_path) - 1 and i > 0:
                continue
            parts.append(str(k.name))
        elif isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:  # an unknown key type of a custom pytree node
            parts.append(str(k).strip(".[]'\""))
    return "/".join(parts)


def _is_none(x: Any) -> bool:
    return x is None


def leaves_with_paths(tree: Any, *, keep_none: bool = False) -> list[tuple[str, Any]]:
    """Returns ``[(path, leaf), ...]`` in flattening order.

    Args:
      tree: any pytree.
      keep_none: if true, ``None`` entries are reported as leaves (as in masks);
        otherwise they are empty subtrees and are skipped, as JAX does.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=_is_none if keep_none else None
    )
    return [(path_str(kp), leaf) for kp, leaf in flat]


def paths(tree: Any) -> list[str]:
    """Returns the path of every leaf of ``tree``, in flattening order."""
    return [p for p, _ in leaves_with_paths(tree)]


def is_array(leaf: Any) -> bool:
    """True for array leaves: JAX and numpy arrays and ``jax.ShapeDtypeStruct``."""
    return isinstance(leaf, jax.Array | np.ndarray | jax.ShapeDtypeStruct) or (
        hasattr(leaf, "shape") and hasattr(leaf, "dtype") and not isinstance(leaf, type)
    )


def weights(path: str, leaf: Any) -> bool:
    """The default selection: floating-point arrays with ``ndim >= 2``.

    These are kernels, convolution filters and embeddings; biases and norm
    scales are left out.
    """
    del path
    return (
        is_array(leaf)
        and len(leaf.shape) >= 2
        and jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating)
    )


def arrays(path: str, leaf: Any) -> bool:
    """Selects every array leaf (use as ``where=jaxrm.tree.arrays``)."""
    del path
    return is_array(leaf)


def _predicate(where: Where, argument: str = "where") -> Callable[[str, Any], bool]:
    if where is None:
        return weights
    if isinstance(where, str):
        try:
            pattern = re.compile(where)
        except re.error as e:
            raise ValueError(f"{argument}={where!r} is not a valid regular expression: {e}") from e
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
      where: ``None`` ([`weights`][jaxrm.tree.weights]), a regular expression searched in each
        leaf's path, or a callable ``(path, leaf) -> bool``.

    Returns:
      A pytree of ``tree``'s structure with ``True``/``False`` leaves.

    Raises:
      TypeError: ``where`` is none of the accepted kinds.
      ValueError: ``where`` is an invalid regular expression.
    """
    pred = _predicate(where)
    return jax.tree_util.tree_map_with_path(lambda kp, leaf: bool(pred(path_str(kp), leaf)), tree)


def selected(tree: Any, where: Where = None, *, argument: str = "where") -> list[str]:
    """Returns the paths ``where`` chooses, raising if it chooses none.

    Raises:
      ValueError: nothing is selected (the message lists the tree's paths).
    """
    pred = _predicate(where, argument)
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
      where: the selection (see [`select`][jaxrm.tree.select]).
      otherwise: called on unselected leaves instead of leaving them unchanged
        (e.g. ``lambda p, x: None`` to build a mask tree).

    Returns:
      A pytree of ``tree``'s structure.
    """
    pred = _predicate(where)

    def visit(kp, leaf):
        p = path_str(kp)
        if pred(p, leaf):
            return fn(p, leaf)
        return leaf if otherwise is None else otherwise(p, leaf)

    return jax.tree_util.tree_map_with_path(visit, tree)


def aligned(
    reference: Any,
    other: Any,
    argument: str,
    *,
    shapes: bool = True,
    is_leaf: Callable[[Any], bool] | None = None,
) -> list:
    """Returns ``other``'s entry for each leaf of ``reference``, in flattening order.

    Used for masks, gradients and per-leaf settings. Entries are matched by
    leaf path, so the containers may differ (an NNX ``State`` of ``Param``
    variables against one of plain arrays), and ``None`` entries of ``other``
    (dense leaves of a mask tree, the ``None`` fields of an ``eqx.filter``-ed
    module) are allowed where ``reference`` has no leaf.

    Args:
      reference: the parameters.
      other: a pytree with an entry (or ``None``) at each of ``reference``'s paths.
      argument: the argument's name, for error messages.
      shapes: also check that array entries have the reference leaf's shape.
      is_leaf: passed to the flattening of ``reference`` (e.g.
        ``quant.is_quantized`` to treat quantized leaves as leaves).

    Raises:
      ValueError: a leaf of ``reference`` has no entry, ``other`` has an extra
        non-``None`` entry, or (with ``shapes``) an array entry's shape
        differs; the message names ``argument`` and the leaf path.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(reference, is_leaf=is_leaf)
    ref = [(path_str(kp), leaf) for kp, leaf in flat]
    oth = leaves_with_paths(other, keep_none=True)
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
                f"{argument} does not have the structure of the parameters: " + "; ".join(detail)
            )
        values = [by_path[p] for p in ref_paths]
    if shapes:
        for (p, r), v in zip(ref, values):
            if v is not None and is_array(v) and tuple(v.shape) != tuple(np.shape(r)):
                raise ValueError(
                    f"{argument} at leaf {p!r} has shape {tuple(v.shape)}, "
                    f"expected {tuple(np.shape(r))}"
                )
    return values


def check_matches(reference: Any, other: Any, argument: str, *, shapes: bool = True) -> None:
    """Checks that ``other`` lines up with ``reference`` leaf by leaf (see
    [`aligned`][jaxrm.tree.aligned]).

    Raises:
      ValueError: naming ``argument`` and the first leaf path that differs.
    """
    aligned(reference, other, argument, shapes=shapes)


def count(tree: Any, where: Where = None) -> int:
    """Returns the number of elements in the leaves ``where`` selects.

    With the default ``where=None`` only weights are counted; pass
    ``where=jaxrm.tree.arrays`` to count every parameter, biases included.
    """
    pred = _predicate(where)
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
