"""One vocabulary for "a value per leaf", and its one resolver.

Every argument that may differ per leaf (sparsity, pattern, bits, axis,
stacked axes, index bits, entropy coder, remat policy, partition spec, ...)
accepts:

* a scalar (one value for every leaf);
* a pytree of the parameters' structure (matched by leaf path, so an
  ``nnx.State`` setting fits a plain-dict tree of the same paths);
* a callable ``(path, leaf) -> value``;
* an ordered list of ``(regex, value)`` rules, first match wins
  (``re.search`` on the leaf path), or a [jaxrm.tree.Rules][] made of one.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxrm.tree._flat import flatten
from jaxrm.tree._paths import aligned, compile_path_regex, is_array

__all__ = ["NO_DEFAULT", "Rules", "resolve", "resolve_tree"]


class _NoDefault:
    def __repr__(self) -> str:
        return "<no default>"


NO_DEFAULT: Any = _NoDefault()


class Rules(tuple):
    """An ordered, hashable list of ``(regex, value)`` rules; the first match wins.

    ``Rules([("attn", 4), ("mlp", 8)])`` is accepted wherever a per-leaf
    setting is, and so is the plain list. Patterns are searched
    (``re.search``) in the leaf path. Being a tuple of pairs, a ``Rules`` is
    hashable when its values are, so it can be a static argument of ``jit``.

    ``Rules(rules, argument="rules")`` takes an iterable of ``(regex, value)``
    pairs and the argument's name for error messages.

    Raises:
      TypeError: an entry is not a ``(str, value)`` pair.
      ValueError: a pattern is not a valid regular expression.
    """

    _compiled: tuple[re.Pattern, ...]

    def __new__(cls, rules: Any = (), argument: str = "rules") -> Rules:
        if isinstance(rules, Rules):
            return rules
        if isinstance(rules, str | bytes) or not isinstance(rules, Sequence):
            raise TypeError(
                f"{argument} must be a list of (regex, value) pairs, got {type(rules).__name__}"
            )
        pairs, compiled = [], []
        for i, rule in enumerate(rules):
            if not (isinstance(rule, tuple | list) and len(rule) == 2):
                raise TypeError(f"{argument}[{i}] must be a (regex, value) pair, got {rule!r}")
            pattern = compile_path_regex(rule[0], f"{argument}[{i}]")
            compiled.append(pattern)
            pairs.append((pattern.pattern, rule[1]))
        obj = super().__new__(cls, pairs)
        obj._compiled = tuple(compiled)
        return obj

    def find(self, path: str) -> int | None:
        """The index of the first rule whose pattern is found in ``path``, or ``None``."""
        for i, pattern in enumerate(self._compiled):
            if pattern.search(path) is not None:
                return i
        return None

    def value(self, path: str, default: Any = NO_DEFAULT, argument: str = "rules") -> Any:
        """The first matching rule's value; ``default`` (or ``ValueError``) if none matches."""
        i = self.find(path)
        if i is not None:
            return self[i][1]
        if default is NO_DEFAULT:
            shown = ", ".join(repr(p) for p, _ in self) or "(no rules)"
            raise ValueError(f"{argument}: no rule matches leaf {path!r} (rules: {shown})")
        return default

    def __repr__(self) -> str:
        return f"Rules({list(self)!r})"


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, str | bytes | numbers.Number | np.generic)


def default_is_scalar(value: Any) -> bool:
    """Scalars of the vocabulary: ``None``, numbers, strings, arrays, tuples of
    plain scalars (an axis tuple, a block shape) and non-callable objects JAX
    treats as leaves (a pattern, a ``Layout``)."""
    if _plain(value) or is_array(value):
        return True
    if isinstance(value, tuple) and not isinstance(value, Rules):
        return all(_plain(v) for v in value) and not _looks_like_rules(value)
    if callable(value) or isinstance(value, list | dict):
        return False
    return jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(value))


def _looks_like_rules(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) > 0
        and all(
            isinstance(r, tuple | list) and len(r) == 2 and isinstance(r[0], str | re.Pattern)
            for r in value
        )
    )


def resolve(
    setting: Any,
    tree: Any,
    *,
    argument: str,
    is_scalar: Callable[[Any], bool] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
    default: Any = NO_DEFAULT,
    only: Sequence[bool] | None = None,
) -> list:
    """One value of ``setting`` per leaf of ``tree``, in flattening order.

    Args:
      setting: a scalar, a pytree of ``tree``'s structure, a callable
        ``(path, leaf) -> value`` or a list of ``(regex, value)`` rules (see
        the module notes).
      tree: the parameters (flattened with ``is_leaf``), or a
        [jaxrm.tree.Flat][] of them.
      argument: the argument's name, for error messages.
      is_scalar: which values are scalars (default: ``None``, numbers,
        strings, arrays, tuples of numbers and non-callable leaf objects).
        Say so when a tuple or a callable is itself a value.
      is_leaf: passed to the flattening of ``tree`` (e.g.
        ``quant.is_quantized``).
      default: the value for a leaf no rule matches; without it such a leaf
        raises ``ValueError``.
      only: one bool per leaf; leaves marked ``False`` get ``None`` without the
        setting being consulted (rules need not match them, callables are not
        called on them).

    Returns:
      A list with one value per leaf.

    Raises:
      ValueError: no rule matches a leaf and there is no ``default``, or a
        pytree setting does not have ``tree``'s paths (naming ``argument`` and
        the leaf path).
      TypeError: a malformed rule list.
    """
    fl = flatten(tree, is_leaf)
    is_leaf = fl.is_leaf
    tree = fl.tree
    flat = fl.items()
    wanted = [True] * len(flat) if only is None else list(only)
    if len(wanted) != len(flat):
        raise ValueError(f"only has {len(wanted)} entries for {len(flat)} leaves")
    scalar = default_is_scalar if is_scalar is None else is_scalar

    if isinstance(setting, Rules) or (not scalar(setting) and _looks_like_rules(setting)):
        rules = Rules(setting, argument)
        return [
            rules.value(p, default, argument) if w else None
            for (p, _), w in zip(flat, wanted)
        ]
    if is_scalar is not None and scalar(setting):
        return [setting if w else None for w in wanted]
    if callable(setting) and not isinstance(setting, type):
        return [setting(p, leaf) if w else None for (p, leaf), w in zip(flat, wanted)]
    if _same_structure(setting, tree, is_leaf):
        values = jax.tree_util.tree_leaves(setting)
        return [v if w else None for v, w in zip(values, wanted)]
    if scalar(setting):
        return [setting if w else None for w in wanted]
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(setting)):
        raise TypeError(
            f"{argument} must be a scalar, a pytree of the parameters' structure, a "
            f"callable (path, leaf) or a list of (regex, value) rules; got "
            f"{type(setting).__name__}"
        )
    values = aligned(
        tree, setting, argument, shapes=False, is_leaf=is_leaf,
        other_is_leaf=lambda x: x is None or scalar(x),
    )
    return [v if w else None for v, w in zip(values, wanted)]


def _same_structure(setting: Any, tree: Any, is_leaf) -> bool:
    if not isinstance(setting, tuple):
        return False
    t = jax.tree_util.tree_structure(tree, is_leaf=is_leaf)
    return not jax.tree_util.treedef_is_leaf(t) and t == jax.tree_util.tree_structure(setting)


def resolve_tree(setting: Any, tree: Any, **kwargs: Any) -> Any:
    """[jaxrm.tree.resolve][] as a pytree of ``tree``'s structure (same keywords)."""
    fl = flatten(tree, kwargs.pop("is_leaf", None))
    return fl.unflatten(resolve(setting, fl, **kwargs))
