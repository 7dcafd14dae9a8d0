"""Argument checks and small numerics shared by the distillation losses.

Checks run on shapes, dtypes and Python hyperparameters only, so they cost
nothing under ``jit`` and never read array values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

# Losses are computed in at least float32, so bfloat16/float16 inputs keep
# their dtype on the way out but do not lose range or precision in exp/log.
_COMPUTE_MIN = jnp.float32


def as_float_array(x: Any, name: str) -> jax.Array:
    """Returns ``x`` as a JAX array, raising ``TypeError`` unless it is floating."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(x).dtype
        except Exception as e:  # e.g. ragged lists
            raise TypeError(f"{name} must be a floating array, got {type(x).__name__}") from e
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating array (float32, bfloat16, ...), got dtype {dtype}; "
            f"cast it, e.g. {name}.astype(jnp.float32)"
        )
    return jnp.asarray(x)


def is_traced(*xs: Any) -> bool:
    """Whether any of ``xs`` is a tracer (its values are unknown until run time)."""
    return any(isinstance(x, Tracer) for x in xs)


def check_ndim(x: jax.Array, name: str, minimum: int, what: str) -> None:
    if x.ndim < minimum:
        raise ValueError(
            f"{name} must have at least {minimum} dimensions ({what}), got shape {x.shape}"
        )


def check_same_shape(a: jax.Array, b: jax.Array, names: tuple[str, str]) -> None:
    """Raises ``ValueError`` naming both arguments unless ``a`` and ``b`` have one shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {a.shape} and {b.shape}"
        )


def check_logits_pair(s: jax.Array, t: jax.Array, names: tuple[str, str]) -> None:
    """Logits ``[..., classes]``: same class count, then same leading (batch) shape."""
    check_ndim(s, names[0], 1, "[..., classes]")
    check_ndim(t, names[1], 1, "[..., classes]")
    if s.shape[-1] != t.shape[-1]:
        raise ValueError(
            f"{names[0]} has {s.shape[-1]} classes and {names[1]} has {t.shape[-1]}; "
            "the last axis is the class axis and must match"
        )
    if s.shape[:-1] != t.shape[:-1]:
        raise ValueError(
            f"{names[0]} and {names[1]} have different batch shapes {s.shape[:-1]} and "
            f"{t.shape[:-1]} (shapes {s.shape} and {t.shape})"
        )


def check_batch(s: jax.Array, t: jax.Array, names: tuple[str, str]) -> None:
    """Same batch size on axis 0 (the feature sizes may differ)."""
    if s.shape[0] != t.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} have different batch sizes {s.shape[0]} and "
            f"{t.shape[0]} (shapes {s.shape} and {t.shape})"
        )


def positive_number(value: Any, name: str, traced: bool = True) -> Any:
    """Checks a hyperparameter is a finite number > 0; traced values pass unchecked
    where ``traced`` allows them."""
    if isinstance(value, Tracer):
        if traced:
            return value
        raise TypeError(f"{name} must be a concrete Python number (it is static), got a tracer")
    if isinstance(value, bool) or not _is_real_scalar(value):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def unit_interval(value: Any, name: str) -> Any:
    """Checks a weight is a number in [0, 1]; traced values pass unchecked."""
    if isinstance(value, Tracer):
        return value
    if isinstance(value, bool) or not _is_real_scalar(value):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def _is_real_scalar(value: Any) -> bool:
    if isinstance(value, int | float):
        return True
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    return (
        shape == ()
        and dtype is not None
        and (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))
    )


def check_mask(mask: Any, out_shape: Sequence[int], name: str = "mask") -> jax.Array | None:
    """Returns a bool mask broadcast to ``out_shape`` (the per-example values' shape)."""
    if mask is None:
        return None
    dtype = getattr(mask, "dtype", None)
    if dtype is None:
        dtype = np.asarray(mask).dtype
    if dtype != np.bool_:
        raise TypeError(
            f"{name} must be a bool array (True = keep, False = padding), got dtype {dtype}"
        )
    mask = jnp.asarray(mask)
    try:
        return jnp.broadcast_to(mask, tuple(out_shape))
    except ValueError as e:
        raise ValueError(
            f"{name} of shape {mask.shape} does not broadcast to the per-example shape "
            f"{tuple(out_shape)}"
        ) from e


def normalize_axis(axis: Any, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """``None`` means every axis but the first (the batch axis)."""
    if axis is None:
        return tuple(range(1, ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, int | np.integer):
            raise TypeError(f"{name} must be None, an int or a tuple of ints, got {axis!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"{name}={axis!r} is out of range for an array of {ndim} dimensions")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={axis!r} repeats an axis")
    return tuple(sorted(out))


def compute_dtype(*xs: jax.Array) -> Any:
    return jnp.promote_types(jnp.result_type(*xs), _COMPUTE_MIN)


def result_dtype(*xs: jax.Array) -> Any:
    return jnp.result_type(*xs)


def finish(values: jax.Array, mask: jax.Array | None, dtype: Any) -> jax.Array:
    """Zeroes masked-out values and casts to the inputs' dtype."""
    if mask is not None:
        values = jnp.where(mask, values, 0)
    return values.astype(dtype)


def safe_norm(x: jax.Array, axis: Any, keepdims: bool = False) -> jax.Array:
    """Euclidean norm with a zero (not NaN) gradient at the zero vector."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def normalize(x: jax.Array, axis: Any) -> jax.Array:
    """``x / ||x||`` along ``axis``; the zero vector stays zero."""
    n = safe_norm(x, axis, keepdims=True)
    return x / jnp.where(n > 0, n, 1.0)



def zero_where_equal(values: jax.Array, s: jax.Array, t: jax.Array, axis: Any) -> jax.Array:
    """Sets ``values`` to exactly 0 where student and teacher are equal over ``axis``.

    The math already gives 0 there, but compiled code may not: XLA fuses the
    two sides differently or contracts ``a*b - c*d`` into a fused multiply-add,
    leaving ~1e-17. Every loss here has a minimum (zero gradient) at equality,
    so this changes no gradient.
    """
    if s.shape != t.shape:
        return values
    return jnp.where(jnp.all(s == t, axis=axis), 0, values)
