"""Uniform (affine) quantization: post-training ``uniform`` and QAT ``fake_quant``."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import tree as jtree
from jaxrm.quant import _common
from jaxrm.quant._types import QArray

CALIBRATIONS = ("minmax", "percentile", "mse")

# Clipping ratios searched by the "mse" calibration, largest first so that ties
# keep the widest range (r = 1 is plain min/max, so "mse" is never worse).
MSE_RATIOS = tuple(float(r) for r in np.linspace(1.0, 0.2, 81))


def grid(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a ``bits``-bit grid."""
    if symmetric:
        q = 2 ** (bits - 1) - 1
        return -q, q
    return 0, 2**bits - 1


def storage_dtype(bits: int, symmetric: bool) -> Any:
    if symmetric:
        return jnp.int8 if bits <= 8 else jnp.int16
    return jnp.uint8 if bits <= 8 else jnp.uint16


def _reduce_axes(ndim: int, axis: int | None) -> tuple[int, ...]:
    return tuple(i for i in range(ndim) if i != axis)


def _compute_dtype(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


def _scale_zero_point(lo, hi, bits: int, symmetric: bool):
    """Scale and (integral) zero point mapping ``[lo, hi]`` (which holds 0) onto the grid."""
    qmin, qmax = grid(bits, symmetric)
    if symmetric:
        amax = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
        scale = amax / qmax
        scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
        return scale, jnp.zeros_like(scale)
    scale = (hi - lo) / (qmax - qmin)
    scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
    zero_point = jnp.clip(jnp.round(-lo / scale), qmin, qmax)
    return scale, zero_point


def _levels(x, scale, zero_point, bits: int, symmetric: bool):
    """Grid levels of ``x``, rounded and clipped, as floats."""
    qmin, qmax = grid(bits, symmetric)
    return jnp.clip(jnp.round(x / scale) + zero_point, qmin, qmax)


def _minmax(x, symmetric: bool, red: tuple[int, ...]):
    if symmetric:
        amax = jnp.max(jnp.abs(x), axis=red, keepdims=True)
        return -amax, amax
    lo = jnp.minimum(jnp.min(x, axis=red, keepdims=True), 0)
    hi = jnp.maximum(jnp.max(x, axis=red, keepdims=True), 0)
    return lo, hi


def _calibrated_range(x, bits, symmetric, red, calibration, percentile):
    """The clipping range ``(lo, hi)`` (kept dims) chosen by ``calibration``."""
    if calibration == "minmax":
        return _minmax(x, symmetric, red)
    if calibration == "percentile":
        if symmetric:
            amax = jnp.percentile(jnp.abs(x), percentile, axis=red, keepdims=True)
            return -amax, amax
        lo = jnp.percentile(x, 100.0 - percentile, axis=red, keepdims=True)
        hi = jnp.percentile(x, percentile, axis=red, keepdims=True)
        return jnp.minimum(lo, 0), jnp.maximum(hi, 0)
    # "mse": shrink the min/max range by each ratio, keep the best per channel.
    lo, hi = _minmax(x, symmetric, red)
    ratios = jnp.asarray(MSE_RATIOS, x.dtype)

    def error(r):
        scale, zp = _scale_zero_point(r * lo, r * hi, bits, symmetric)
        xq = (_levels(x, scale, zp, bits, symmetric) - zp) * scale
        return jnp.sum(jnp.square(x - xq), axis=red, keepdims=True)

    errors = jax.lax.map(error, ratios)  # (ratios, *kept dims), memory O(x.size)
    best = ratios[jnp.argmin(errors, axis=0)]
    return best * lo, best * hi


@functools.partial(
    jax.jit, static_argnames=("symmetric", "axis", "calibration", "percentile", "wide")
)
def _quantize_arrays(x, bits, *, symmetric, axis, calibration, percentile, wide):
    # ``bits`` is traced so that one compilation serves every bit width of a
    # storage dtype (``wide``: 16-bit storage).
    xf = x.astype(_compute_dtype(x.dtype))
    red = _reduce_axes(xf.ndim, axis)
    lo, hi = _calibrated_range(xf, bits, symmetric, red, calibration, percentile)
    scale, zero_point = _scale_zero_point(lo, hi, bits, symmetric)
    values = _levels(xf, scale, zero_point, bits, symmetric)
    return (
        values.astype(storage_dtype(16 if wide else 8, symmetric)),
        scale.astype(jnp.float32),
        zero_point.astype(jnp.float32),
    )


def _quantize(x, bits, symmetric, axis, calibration, percentile):
    values, scale, zero_point = _quantize_arrays(
        x,
        jnp.int32(bits),
        symmetric=symmetric,
        axis=axis,
        calibration=calibration,
        percentile=percentile,
        wide=bits > 8,
    )
    return QArray(values, scale, zero_point, bits=bits, axis=axis, dtype=str(x.dtype))


def _check_percentile(percentile: Any) -> float:
    if isinstance(percentile, bool) or not isinstance(percentile, int | float | np.floating):
        raise TypeError(f"percentile must be a number in (50, 100], got {percentile!r}")
    if not 50.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
    return float(percentile)


def uniform(
    params: Any,
    bits: Any = 8,
    *,
    symmetric: bool = True,
    axis: int | None = None,
    calibration: str = "minmax",
    percentile: float = 99.9,
    where: jtree.Where = None,
) -> Any:
    """Uniformly quantizes the selected leaves of ``params`` to ``QArray`` leaves.

    Each selected leaf ``x`` becomes ``QArray(values, scale, zero_point)`` with
    ``x ≈ (values - zero_point) * scale``:

    * symmetric: ``values`` in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (signed,
      the grid is symmetric so ``-max`` is representable), ``zero_point = 0``;
    * asymmetric: ``values`` in ``[0, 2**bits - 1]`` (unsigned) and an integral
      ``zero_point``, so that 0.0 is represented exactly; the range always
      contains 0.

    Values are stored as int8/uint8 up to 8 bits and int16/uint16 above. A
    constant-zero tensor (or channel) gets ``scale = 1``.

    Calibration chooses the clipping range ``[lo, hi]``:

    * ``"minmax"``: the tensor's (or channel's) range; every entry is then
      within ``scale / 2`` of its dequantized value;
    * ``"percentile"``: ``percentile`` of ``|x|`` (symmetric) or the
      ``100 - percentile`` and ``percentile`` percentiles (asymmetric);
    * ``"mse"``: the min/max range shrunk by the ratio in
      ``{1.0, 0.99, ..., 0.2}`` that minimizes the squared error (per channel
      with ``axis``); never worse than ``"minmax"``.

    Works under ``jax.jit`` (the NaN/Inf check only runs on concrete arrays).

    Args:
      params: any pytree of parameters.
      bits: integer bits in ``[2, 16]``; an int, a pytree of ``params``'
        structure holding ints (``None`` leaves stay float), or a callable
        ``(path, leaf) -> int | None``.
      symmetric: signed grid with zero point 0, or unsigned grid with a zero point.
      axis: ``None`` for one scale per tensor, or the per-channel axis (e.g.
        ``-1`` for the output features of a Flax kernel).
      calibration: ``"minmax"``, ``"percentile"`` or ``"mse"``.
      percentile: the percentile in ``(50, 100]`` used by ``"percentile"``.
      where: which leaves to quantize (see ``jaxrm.tree.select``); default:
        floating leaves with ``ndim >= 2``.

    Returns:
      A pytree of ``params``' structure with ``QArray`` leaves where quantized.

    Raises:
      ValueError: ``bits`` out of range, unknown ``calibration``, bad
        ``percentile`` or ``axis``, NaN/Inf in a selected leaf, a ``bits``
        pytree of another structure, or ``where`` selecting nothing.
      TypeError: ``where`` selects an integer or non-array leaf, or ``bits`` is
        not an int.
    """
    _common.check_choice(calibration, CALIBRATIONS, "calibration")
    percentile = _check_percentile(percentile)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {symmetric!r}")
    bits_of = _common.per_leaf(params, bits, "bits", _common.is_int_like)
    jtree.selected(params, where)

    def quantize_leaf(path: str, leaf: Any) -> Any:
        b = bits_of(path, leaf)
        if b is None:
            return leaf
        b = _common.check_bits(b, 2, 16, "bits", path)
        _common.check_leaf(path, leaf, where)
        ax = _common.check_axis(path, leaf, axis)
        _common.check_finite(path, leaf)
        return _quantize(jnp.asarray(leaf), b, symmetric, ax, calibration, percentile)

    return jtree.map_selected(quantize_leaf, params, where)


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
      ValueError: ``bits`` out of range or a bad ``axis``.
      TypeError: ``x`` is not a floating array.
    """
    bits = _common.check_bits(bits, 2, 16, "bits")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating array, got dtype {x.dtype}")
    ax = _common.check_axis("x", x, axis)
    if zero_point is not None and symmetric:
        raise ValueError("zero_point is only used with symmetric=False")
    if scale is not None:
        scale = jnp.asarray(scale)
        zero_point = jnp.zeros(()) if zero_point is None else jnp.asarray(zero_point)
    return _fake_quant(x, jnp.int32(bits), scale, zero_point, symmetric=symmetric, axis=ax)


@functools.partial(jax.jit, static_argnames=("symmetric", "axis"))
def _fake_quant(x, bits, scale, zero_point, *, symmetric, axis):
    xf = x.astype(_compute_dtype(x.dtype))
    if scale is None:
        lo, hi = _minmax(jax.lax.stop_gradient(xf), symmetric, _reduce_axes(xf.ndim, axis))
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
      where: which leaves to fake-quantize (default: weights, ``ndim >= 2``).

    Returns:
      A pytree of ``params``' structure with float leaves on the grid.

    Raises:
      ValueError: ``bits`` out of range or ``where`` selecting nothing.
      TypeError: ``where`` selects an integer or non-array leaf.
    """
    bits_of = _common.per_leaf(params, bits, "bits", _common.is_int_like)
    jtree.selected(params, where)

    def visit(path: str, leaf: Any) -> Any:
        b = bits_of(path, leaf)
        if b is None:
            return leaf
        _common.check_leaf(path, leaf, where)
        b = _common.check_bits(b, 2, 16, "bits", path)
        return fake_quant(leaf, b, symmetric=symmetric, axis=_common.check_axis(path, leaf, axis))

    return jtree.map_selected(visit, params, where)
