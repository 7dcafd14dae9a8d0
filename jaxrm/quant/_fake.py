"""Fake quantization for QAT: quantize-dequantize with a straight-through gradient."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxrm import tree as jtree
from jaxrm.quant import _common
from jaxrm.quant._uniform import (
    _compute_dtype,
    _keep_axes,
    _minmax,
    _reduce_axes,
    _scale_zero_point,
    grid,
)


def fake_quant(
    x: jax.Array,
    bits: int,
    *,
    symmetric: bool = True,
    axis: int | None = None,
    scale: jax.Array | None = None,
    zero_point: jax.Array | None = None,
) -> jax.Array:
    """Quantizes and dequantizes ``x``, with a straight-through gradient.

    The forward value is exactly ``uniform(x, bits, ...)`` dequantized (min/max
    calibration over the whole tensor, or per channel along ``axis``), unless a
    fixed ``scale`` (and, asymmetric, ``zero_point``) is given, e.g. from a
    calibration pass or a running average. The gradient with respect to ``x``
    is the straight-through estimator: 1 where the grid's clipping is inactive
    (the rounded level lies inside the integer range) and 0 where an entry is
    clipped. The scale is treated as a constant (it gets no gradient).

    Works under ``jit``, ``grad`` and ``vmap`` (under ``vmap`` the range is
    computed per mapped example).

    Args:
      x: a floating array.
      bits: integer bits in ``[2, 16]``.
      symmetric: signed grid with zero point 0, or unsigned with a zero point.
      axis: ``None`` for one range per tensor, or the per-channel axis.
      scale: optional fixed scale, broadcastable to ``x``.
      zero_point: optional fixed integral zero point (asymmetric only),
        broadcastable to ``x``; defaults to 0.

    Returns:
      An array of ``x``'s shape and dtype on the quantization grid.

    Raises:
      ValueError: ``bits`` out of range, a bad ``axis``, an empty ``x``, or a
        concrete ``scale`` that is not positive and finite.
      TypeError: ``x`` is not a floating array or ``bits`` is not an int.
    """
    return fake_quant_keep(
        x, bits, symmetric=symmetric, axis=axis, scale=scale, zero_point=zero_point
    )


def fake_quant_keep(
    x, bits, *, symmetric=True, axis=None, stacked=(), scale=None, zero_point=None, path="x"
):
    """``fake_quant`` with ranges per stacked slice (``stacked`` axes kept)."""
    bits = _common.check_bits(bits, 2, 16, "bits")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{path} must be a floating array, got dtype {x.dtype}")
    _common.check_nonempty(path, x, "fake_quant")
    ax = _common.check_axis(path, x, axis)
    if zero_point is not None and symmetric:
        raise ValueError("zero_point is only used with symmetric=False")
    if scale is not None:
        scale = jnp.asarray(scale)
        if _common.is_concrete(scale) and not bool(jnp.all((scale > 0) & jnp.isfinite(scale))):
            raise ValueError(f"scale must be positive and finite, got min {float(jnp.min(scale))}")
        zero_point = jnp.zeros(()) if zero_point is None else jnp.asarray(zero_point)
    return _fake_quant(
        x,
        jnp.int32(bits),
        scale,
        zero_point,
        symmetric=symmetric,
        keep=_keep_axes(ax, tuple(stacked)),
    )


@functools.partial(jax.jit, static_argnames=("symmetric", "keep"))
def _fake_quant(x, bits, scale, zero_point, *, symmetric, keep):
    xf = x.astype(_compute_dtype(x.dtype))
    if scale is None:
        lo, hi = _minmax(jax.lax.stop_gradient(xf), symmetric, _reduce_axes(xf.ndim, keep))
        s, zp = _scale_zero_point(lo, hi, bits, symmetric)
    else:
        s, zp = scale.astype(xf.dtype), zero_point.astype(xf.dtype)
    s = jax.lax.stop_gradient(s)
    zp = jax.lax.stop_gradient(zp)
    qmin, qmax = grid(bits, symmetric)
    level = jnp.round(xf / s) + zp
    inside = (level >= qmin) & (level <= qmax)
    xq = (jnp.clip(level, qmin, qmax) - zp) * s
    # The value of xq; the gradient is 1 inside the grid's range and 0 where clipped.
    out = jax.lax.stop_gradient(xq) + jnp.where(inside, xf - jax.lax.stop_gradient(xf), 0)
    return out.astype(x.dtype)


def fake_quant_tree(
    params: Any,
    bits: Any = 8,
    *,
    symmetric: bool = True,
    axis: int | None = None,
    where: jtree.Where = None,
    stacked: Any = None,
) -> Any:
    """Applies [`fake_quant`][jaxrm.quant.fake_quant] to the selected leaves of ``params``.

    Use it inside a loss for quantization-aware training:
    ``loss(fake_quant_tree(params, 4), batch)``; gradients flow to the float
    parameters through the straight-through estimator.

    Args:
      params: any pytree of parameters.
      bits: an int in ``[2, 16]``, a per-leaf pytree (``None`` leaves stay
        float) or a callable ``(path, leaf) -> int | None``.
      symmetric: signed grid with zero point 0, or unsigned with a zero point.
      axis: ``None`` per tensor, or the per-channel axis.
      where: which leaves to fake-quantize (default: ``jaxrm.tree.weights``).
      stacked: stacked axes as a per-leaf setting (ranges per slice);
        default: inferred from the layout.

    Returns:
      A pytree of ``params``' structure with float leaves on the grid.

    Raises:
      ValueError: ``bits`` out of range or ``where`` selecting nothing.
      TypeError: ``where`` selects an integer or non-array leaf.
    """
    new = {}
    for t in _common.grid_targets(params, where, bits, axis, stacked, finite=False):
        new[t.path] = fake_quant_keep(
            t.leaf,
            t.bits,
            symmetric=symmetric,
            axis=t.settings["axis"],
            stacked=t.axes.stacked,
            path=t.path,
        )
    return _common.rebuild(params, where, new)
