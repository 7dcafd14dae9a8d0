"""Per-leaf settings and leaf layouts as the quantizers read them.

Both come from ``jaxrm.tree`` (``resolve`` and ``layouts``) so every wing reads
them the same way. Until the tree package provides them, the small readers
below give the same answers for the forms the quantizers use (a scalar, a
pytree of the params' structure, a callable ``(path, leaf) -> value``, a list
of ``(regex, value)`` rules; an explicit ``stacked`` axis).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxrm import tree as jtree

_NO_DEFAULT = object()


def _is_rules(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], str) for r in value)
    )


def _fallback_resolve(
    setting: Any, tree: Any, argument: str, is_scalar: Callable[[Any], bool], default: Any
) -> list:
    flat = leaf_paths(tree)
    if is_scalar(setting):
        return [setting for _ in flat]
    if callable(setting):
        return [setting(p, leaf) for p, leaf in flat]
    if _is_rules(setting):
        rules = []
        for pattern, value in setting:
            try:
                rules.append((re.compile(pattern), value))
            except re.error as e:
                raise ValueError(f"{argument}: rule {pattern!r} is not a valid regex: {e}") from e
        out = []
        for p, _ in flat:
            hit = next((v for rx, v in rules if rx.search(p)), _NO_DEFAULT)
            if hit is _NO_DEFAULT:
                if default is _NO_DEFAULT:
                    raise ValueError(f"{argument}: no rule matches leaf {p!r}")
                hit = default
            out.append(hit)
        return out
    if setting is None or not jax.tree_util.treedef_children(jax.tree.structure(setting)):
        raise TypeError(
            f"{argument} must be a value, a pytree of the parameters' structure, a "
            f"callable (path, leaf) -> value or a list of (regex, value) rules, got {setting!r}"
        )
    return jtree.aligned(tree, setting, argument, shapes=False, is_leaf=_is_quantized)


def _is_quantized(x: Any) -> bool:
    from jaxrm.quant._types import is_quantized

    return is_quantized(x)


def leaf_paths(tree: Any) -> list[tuple[str, Any]]:
    """``(path, leaf)`` in flattening order, quantized leaves kept whole."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_quantized)
    return [(jtree.path_str(kp), leaf) for kp, leaf in flat]


def resolve(
    setting: Any,
    tree: Any,
    *,
    argument: str,
    is_scalar: Callable[[Any], bool],
    default: Any = _NO_DEFAULT,
) -> dict[str, Any]:
    """One value per leaf path of ``tree`` (see ``jaxrm.tree.resolve``)."""
    _check_kind(setting, argument, is_scalar)
    resolver = getattr(jtree, "resolve", None)
    if resolver is not None:
        kw = {} if default is _NO_DEFAULT else {"default": default}
        values = resolver(
            setting, tree, argument=argument, is_scalar=is_scalar, is_leaf=_is_quantized, **kw
        )
    else:
        values = _fallback_resolve(setting, tree, argument, is_scalar, default)
    return {p: v for (p, _), v in zip(leaf_paths(tree), values)}


def _check_kind(setting: Any, argument: str, is_scalar: Callable[[Any], bool]) -> None:
    """A TypeError for a setting that is none of the accepted kinds, before any
    structure comparison (whose message would mislead)."""
    if is_scalar(setting) or callable(setting) or _is_rules(setting):
        return
    leaves = jax.tree.leaves(setting, is_leaf=lambda x: x is None)
    container = bool(jax.tree_util.treedef_children(jax.tree.structure(setting)))
    if not container or not all(x is None or is_scalar(x) for x in leaves):
        raise TypeError(
            f"{argument} must be a value, a pytree of the parameters' structure holding "
            f"values, a callable (path, leaf) -> value or a list of (regex, value) rules, "
            f"got {setting!r}"
        )


@dataclasses.dataclass(frozen=True)
class Axes:
    """What a quantizer needs of a leaf's layout (axes non-negative)."""

    stacked: tuple[int, ...] = ()
    out: tuple[int, ...] = ()
    contract: tuple[int, ...] = ()


def _normalize(path: str, shape: tuple[int, ...], axes: Any, argument: str) -> tuple[int, ...]:
    if axes is None:
        return ()
    if isinstance(axes, int | np.integer) and not isinstance(axes, bool):
        axes = (axes,)
    if not isinstance(axes, tuple | list) or not all(
        isinstance(a, int | np.integer) and not isinstance(a, bool) for a in axes
    ):
        raise TypeError(f"{argument} at leaf {path!r} must be None, an int or a tuple of ints")
    out = []
    for a in axes:
        if not -len(shape) <= int(a) < len(shape):
            raise ValueError(
                f"{argument}={int(a)} is out of range for leaf {path!r} of shape {shape}"
            )
        out.append(int(a) % len(shape))
    if len(out) >= len(shape) and out:
        raise ValueError(f"{argument}={tuple(axes)} leaves no axis of leaf {path!r} {shape}")
    return tuple(sorted(set(out)))


def _guess(path: str, shape: tuple[int, ...], stacked: tuple[int, ...]) -> Axes:
    rest = [i for i in range(len(shape)) if i not in stacked]
    name = path.rsplit("/", 1)[-1]
    if len(rest) < 2:
        return Axes(stacked, (), ())
    if name == "weight":  # Equinox (out, in, ...)
        return Axes(stacked, (rest[0],), tuple(rest[1:]))
    if name == "embedding":
        return Axes(stacked, (rest[0],), (rest[-1],))
    if len(rest) > 2 and name == "kernel":  # Flax conv HWIO
        return Axes(stacked, (rest[-1],), (rest[-2],))
    return Axes(stacked, (rest[-1],), tuple(rest[:-1]))


def axes_of(tree: Any, stacked: Any, paths: list[str] | None = None) -> dict[str, Axes]:
    """Stacked, output and contracted axes per array leaf path (of ``paths`` if given)."""
    flat = leaf_paths(tree)
    layouts = getattr(jtree, "layouts", None)
    if layouts is not None:
        found = layouts(tree, stacked=stacked, is_leaf=_is_quantized)
        return {
            p: Axes(tuple(lay.stacked), tuple(lay.out), tuple(lay.contract))
            for (p, _), lay in zip(flat, found)
            if lay is not None
        }
    per = resolve(stacked, tree, argument="stacked", is_scalar=_is_axes_scalar)
    out = {}
    for p, leaf in flat:
        if not jtree.is_array(leaf) and not _is_quantized(leaf):
            continue
        if paths is not None and p not in paths:
            continue
        shape = tuple(leaf.shape)
        st = _normalize(p, shape, per[p], "stacked")
        out[p] = _guess(p, shape, st)
    return out


def _is_axes_scalar(value: Any) -> bool:
    return value is None or (
        isinstance(value, int | np.integer | tuple) and not isinstance(value, bool)
    )
