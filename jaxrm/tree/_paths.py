"""Leaf paths and matching by path: the ground floor every wing stands on.

Every transform in jaxrm names leaves by their *path*: the keys from the root to
the leaf joined by ``/`` (``"Dense_0/kernel"``, ``"layers/3/attn/q"``). The
``.value`` attribute of a Flax NNX variable (and of a Linen ``nn.Partitioned``
box) is dropped, so a Linen ``params`` dict and the ``nnx.State`` of the same
network give the same paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

__all__ = [
    "aligned",
    "check_matches",
    "compile_path_regex",
    "is_array",
    "leaves_with_paths",
    "path_str",
    "paths",
]


def compile_path_regex(pattern: Any, argument: str) -> re.Pattern:
    """Compiles a regular expression to be searched (``re.search``) in leaf paths.

    This is the one place a path regex is compiled, so every ``where=`` string
    and every ``(regex, value)`` rule fails the same way.

    Args:
      pattern: a string or an already compiled ``re.Pattern``.
      argument: the argument's name, for error messages.

    Returns:
      The compiled pattern.

    Raises:
      TypeError: ``pattern`` is neither a string nor a compiled pattern.
      ValueError: ``pattern`` is not a valid regular expression.
    """
    if isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(
            f"{argument} must hold regular expression strings, got {type(pattern).__name__}"
        )
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{argument}={pattern!r} is not a valid regular expression: {e}") from e


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


def leaves_with_paths(
    tree: Any, *, keep_none: bool = False, is_leaf: Callable[[Any], bool] | None = None
) -> list[tuple[str, Any]]:
    """Returns ``[(path, leaf), ...]`` in flattening order.

    Args:
      tree: any pytree.
      keep_none: if true, ``None`` entries are reported as leaves (as in masks);
        otherwise they are empty subtrees and are skipped, as JAX does.
      is_leaf: passed to the flattening (e.g. ``quant.is_quantized``).
    """
    if keep_none:
        stop = _is_none if is_leaf is None else (lambda x: x is None or is_leaf(x))
    else:
        stop = is_leaf
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=stop)
    return [(path_str(kp), leaf) for kp, leaf in flat]


def paths(tree: Any) -> list[str]:
    """Returns the path of every leaf of ``tree``, in flattening order."""
    return [p for p, _ in leaves_with_paths(tree)]


def is_array(leaf: Any) -> bool:
    """True for array leaves: JAX and numpy arrays and ``jax.ShapeDtypeStruct``."""
    return isinstance(leaf, jax.Array | np.ndarray | jax.ShapeDtypeStruct) or (
        hasattr(leaf, "shape") and hasattr(leaf, "dtype") and not isinstance(leaf, type)
    )


def aligned(
    reference: Any,
    other: Any,
    argument: str,
    *,
    shapes: bool = True,
    is_leaf: Callable[[Any], bool] | None = None,
    other_is_leaf: Callable[[Any], bool] | None = None,
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
      other_is_leaf: passed to the flattening of ``other`` (e.g. to keep
        tuple-valued settings whole).

    Raises:
      ValueError: a leaf of ``reference`` has no entry, ``other`` has an extra
        non-``None`` entry, or (with ``shapes``) an array entry's shape
        differs; the message names ``argument`` and the leaf path.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(reference, is_leaf=is_leaf)
    ref = [(path_str(kp), leaf) for kp, leaf in flat]
    oth = leaves_with_paths(other, keep_none=True, is_leaf=other_is_leaf)
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


