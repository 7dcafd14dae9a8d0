"""Argument checks shared by the quantizers: bits, per-leaf settings, leaves, masks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import tree as jtree


def check_bits(bits: Any, lo: int, hi: int, argument: str = "bits", path: str | None = None) -> int:
    """Returns ``bits`` as an int, raising unless it is an integer in ``[lo, hi]``."""
    where = f" at leaf {path!r}" if path is not None else ""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise TypeError(f"{argument}{where} must be an int in [{lo}, {hi}], got {bits!r}")
    if not lo <= int(bits) <= hi:
        raise ValueError(f"{argument}{where} must be in [{lo}, {hi}], got {int(bits)}")
    return int(bits)


def per_leaf(
    params: Any, value: Any, argument: str, scalar: Callable[[Any], bool]
) -> Callable[[str, Any], Any]:
    """Turns a scalar, a per-leaf pytree or a callable into ``(path, leaf) -> value``.

    A pytree must have the structure of ``params`` (``None`` leaves allowed);
    a callable is called as ``value(path, leaf)``.
    """
    if scalar(value):
        return lambda path, leaf: value
    if isinstance(value, bool | float | complex | str | np.number) or jtree.is_array(value):
        raise TypeError(
            f"{argument} must be an int, a pytree of the parameters' structure or a "
            f"callable (path, leaf) -> value, got {value!r}"
        )
    if callable(value):
        return value
    jtree.check_matches(params, value, argument, shapes=False)
    table = dict(jtree.leaves_with_paths(value, keep_none=True))
    return lambda path, leaf: table[path]


def is_int_like(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def check_leaf(path: str, leaf: Any, where: Any) -> None:
    """Raises unless ``leaf`` is a floating array (integer leaves cannot be quantized)."""
    if not jtree.is_array(leaf):
        raise TypeError(
            f"params leaf {path!r} is a {type(leaf).__name__}, not an array; "
            f"where={where!r} must select only array leaves"
        )
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
        raise TypeError(
            f"params leaf {path!r} has dtype {leaf.dtype}; only floating leaves can be "
            f"quantized (where={where!r} selected it)"
        )


def is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_finite(path: str, leaf: Any, argument: str = "params") -> None:
    """Raises on NaN/Inf in a concrete leaf (traced leaves are not checked)."""
    if is_concrete(leaf) and not bool(jnp.all(jnp.isfinite(leaf))):
        bad = int(jnp.sum(~jnp.isfinite(leaf)))
        raise ValueError(f"{argument} leaf {path!r} has {bad} NaN or Inf entries")


def check_axis(path: str, leaf: Any, axis: Any, argument: str = "axis") -> int | None:
    """Returns ``axis`` normalized to ``[0, ndim)``, or ``None``."""
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise TypeError(f"{argument} must be None or an int, got {axis!r}")
    ndim = len(leaf.shape)
    if not -ndim <= int(axis) < ndim:
        raise ValueError(
            f"{argument}={int(axis)} is out of range for leaf {path!r} of shape {tuple(leaf.shape)}"
        )
    return int(axis) % ndim


def check_choice(value: Any, choices: tuple[str, ...], argument: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{argument} must be one of {list(choices)}, got {value!r}")
    return value
