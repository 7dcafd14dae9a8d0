"""Argument checks shared by every wing: one wording, one exception type per failure.

Each check returns the (normalized) value or raises ``TypeError`` for a value
of the wrong type and ``ValueError`` for a value of the right type outside its
range. Messages name the argument and, when given, the leaf path::

    bits = _checks.integer(bits, "bits", minimum=1, maximum=16, path=path)
    scope = _checks.choice(scope, "scope", ("layer", "global"))
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "at",
    "axis",
    "axes",
    "choice",
    "integer",
    "is_int",
    "positive_int",
    "real",
]


def at(path: str | None) -> str:
    """``" at leaf 'p'"`` for error messages, or ``""`` without a path."""
    return "" if path is None else f" at leaf {path!r}"


def is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and not (
        type(value).__name__ == "bool_"
    )


def integer(
    value: Any,
    argument: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    path: str | None = None,
) -> int:
    """Returns ``value`` as an ``int`` in ``[minimum, maximum]``.

    Raises:
      TypeError: ``value`` is not an integer (bools are refused).
      ValueError: ``value`` is outside the bounds.
    """
    if not is_int(value):
        raise TypeError(f"{argument}{at(path)} must be an int, got {type(value).__name__}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{argument}{at(path)} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{argument}{at(path)} must be <= {maximum}, got {v}")
    return v


def positive_int(value: Any, argument: str, *, path: str | None = None) -> int:
    """Returns ``value`` as an ``int >= 1`` (see `integer`)."""
    return integer(value, argument, minimum=1, path=path)


def real(
    value: Any,
    argument: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    above: float | None = None,
    finite: bool = True,
    path: str | None = None,
) -> float:
    """Returns ``value`` as a float; ``minimum``/``maximum`` inclusive, ``above``/``below`` strict.

    Raises:
      TypeError: ``value`` is not a real number (bools are refused).
      ValueError: ``value`` is NaN, infinite (with ``finite``) or outside the bounds.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argument}{at(path)} must be a number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or (finite and math.isinf(v)):
        raise ValueError(f"{argument}{at(path)} must be a finite number, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{argument}{at(path)} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{argument}{at(path)} must be <= {maximum}, got {v}")
    if above is not None and not v > above:
        raise ValueError(f"{argument}{at(path)} must be > {above}, got {v}")
    if below is not None and not v < below:
        raise ValueError(f"{argument}{at(path)} must be < {below}, got {v}")
    return v


def choice(value: Any, argument: str, options: Iterable[Any], *, path: str | None = None) -> Any:
    """Returns ``value`` if it is one of ``options``.

    Raises:
      ValueError: ``value`` is not one of ``options`` (the message lists them).
    """
    options = tuple(options)
    try:
        ok = value in options
    except TypeError:  # unhashable or incomparable values are simply not options
        ok = False
    if not ok:
        shown = ", ".join(repr(o) for o in options)
        raise ValueError(f"{argument}{at(path)} must be one of {shown}; got {value!r}")
    return value


def axis(value: Any, argument: str, ndim: int, *, path: str | None = None) -> int:
    """Returns ``value`` as a non-negative axis of an ``ndim``-dimensional array.

    Raises:
      TypeError: ``value`` is not an int.
      ValueError: ``value`` is out of range for ``ndim`` dimensions.
    """
    a = integer(value, argument, path=path)
    if not -ndim <= a < ndim:
        raise ValueError(
            f"{argument}{at(path)}: axis {a} is out of range for {ndim} dimension(s)"
        )
    return a % ndim


def axes(value: Any, argument: str, ndim: int, *, path: str | None = None) -> tuple[int, ...]:
    """Returns an int or a sequence of ints as a tuple of distinct non-negative axes.

    Raises:
      TypeError: an entry is not an int, or ``value`` is neither an int nor a sequence.
      ValueError: an axis is out of range or repeated.
    """
    if is_int(value):
        value = (value,)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"{argument}{at(path)} must be an int or a tuple of ints, got {type(value).__name__}"
        )
    out = tuple(axis(a, argument, ndim, path=path) for a in value)
    if len(set(out)) != len(out):
        raise ValueError(f"{argument}{at(path)} repeats an axis: {tuple(value)}")
    return out


def prng_key(value: Any, argument: str = "key") -> jax.Array:
    """``value`` as a typed PRNG key; a raw ``uint32[2]`` key is wrapped.

    Raises:
      TypeError: ``value`` is neither a typed key nor a raw ``uint32[2]`` key.
    """
    # Arrays by duck type, as jaxrm.tree.is_array (which imports this module).
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type):
        if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            return value
        if value.dtype == jnp.uint32 and tuple(value.shape) == (2,):
            return jax.random.wrap_key_data(value)
    raise TypeError(
        f"{argument} must be a JAX PRNG key (jax.random.key(seed) or "
        f"jax.random.PRNGKey(seed)), got {type(value).__name__}"
    )
