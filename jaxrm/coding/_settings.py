"""Per-leaf settings of the coder (``index_bits``, ``entropy``, ``stacked``), one value per leaf.

A setting is a scalar, a pytree of the tree's structure, a callable
``(path, leaf) -> value`` or an ordered list of ``(regex, value)`` rules (first
match wins). ``jaxrm.tree.resolve`` is the one resolver when it is present;
until then the same vocabulary is read here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from jaxrm import tree as jtree
from jaxrm.quant._types import is_quantized

__all__ = ["is_rules", "per_leaf", "per_path"]

_NO_DEFAULT = object()


def is_rules(setting: Any) -> bool:
    """True for a non-empty list of ``(regex, value)`` pairs."""
    return (
        isinstance(setting, list)
        and len(setting) > 0
        and all(isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], str) for r in setting)
    )


def per_path(
    setting: Any,
    paths: list[str],
    leaves: list[Any],
    *,
    argument: str,
    is_scalar: Callable[[Any], bool],
    default: Any = _NO_DEFAULT,
) -> list[Any] | None:
    """Resolves the forms that need no tree (scalar, callable, rules); ``None`` otherwise."""
    if is_scalar(setting):
        return [setting] * len(paths)
    if callable(setting):
        return [setting(p, leaf) for p, leaf in zip(paths, leaves)]
    if is_rules(setting):
        try:
            rules = [(re.compile(rx), v) for rx, v in setting]
        except re.error as e:
            raise ValueError(f"{argument} has an invalid regular expression: {e}") from e
        out = []
        for p in paths:
            hit = next((v for rx, v in rules if rx.search(p)), _NO_DEFAULT)
            if hit is _NO_DEFAULT:
                if default is _NO_DEFAULT:
                    raise ValueError(f"{argument}: no rule matches the leaf {p!r}")
                hit = default
            out.append(hit)
        return out
    return None


def per_leaf(
    setting: Any,
    tree: Any,
    paths: list[str],
    leaves: list[Any],
    *,
    argument: str,
    is_scalar: Callable[[Any], bool],
    default: Any = _NO_DEFAULT,
) -> list[Any]:
    """One value of ``setting`` per leaf of ``tree`` (quantized leaves whole), in order."""
    resolve = getattr(jtree, "resolve", None)
    if resolve is not None:
        kwargs = {} if default is _NO_DEFAULT else {"default": default}
        values = resolve(
            setting, tree, argument=argument, is_scalar=is_scalar, is_leaf=is_quantized, **kwargs
        )
        return list(values)
    simple = per_path(
        setting, paths, leaves, argument=argument, is_scalar=is_scalar, default=default
    )
    if simple is not None:
        return simple
    return list(jtree.aligned(tree, setting, argument, shapes=False, is_leaf=is_quantized))
