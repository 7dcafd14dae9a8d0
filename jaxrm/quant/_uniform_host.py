"""The numpy twin of ``uniform``'s min/max quantizer, for eager calls on host leaves.

A one-off ``quant.uniform`` of a model in a fresh process compiled one XLA
program per leaf shape (0.9-7 s for a ResNet-18) for a few memory passes of
work. On a float32 numpy (or CPU) leaf with ``calibration="minmax"`` the same
values are computed here with numpy, with no compilation: one stacked slice
at a time (a slice stays in cache between the range pass and the level pass)
straight from the caller's buffer, with no copy to the device first.

The results are bit-identical to the compiled program: XLA evaluates a
division by a broadcast divisor as a multiplication by the divisor's
reciprocal (when the divisor has fewer entries than the dividend), so the
scale is ``range * (1 / qmax)`` and the level ``round(x * (1 / scale))``
wherever the program computes them so, here too (``_divide``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

_BLOCK = 1 << 16  # entries of the float buffer the levels pass through


def applies(x: Any, mask: Any, calibration: str, group: Any, pack: bool) -> bool:
    """Whether ``quantize`` handles this leaf (else the compiled program does)."""
    if calibration != "minmax" or group is not None or pack:
        return False
    if not _on_host(x) or (mask is not None and not _on_host(mask)):
        return False
    return np.dtype(x.dtype) == np.float32 and x.ndim >= 1


def _on_host(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return True
    if isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array):
        return False
    return all(d.platform == "cpu" for d in x.devices())


def _grid(bits: int, symmetric: bool) -> tuple[int, int]:
    if symmetric:
        q = 2 ** (bits - 1) - 1
        return -q, q
    return 0, 2**bits - 1


def _divide(a, b, reciprocal: bool):
    """``a / b`` as the compiled program computes it on the whole leaf: where ``b`` is
    broadcast to more entries, XLA multiplies by its reciprocal (one rounding more)."""
    if reciprocal:
        return np.multiply(a, np.float32(1) / np.asarray(b, np.float32))
    return np.divide(a, b)


def _slice(x, mask, bits, symmetric, red, outs, recip_scale, recip_levels):
    """Quantizes one slice ``x`` into ``outs`` (values, scale, zero point)."""
    f32 = np.float32
    if mask is not None:
        x = np.where(mask, x, f32(0))
    qmin, qmax = _grid(bits, symmetric)
    lo = np.minimum(x.min(axis=red, keepdims=True), f32(0))
    hi = np.maximum(x.max(axis=red, keepdims=True), f32(0))
    if symmetric:
        scale = _divide(np.maximum(-lo, hi), f32(qmax), recip_scale)
        scale = np.where(scale > 0, scale, f32(1)).astype(f32)
        zp = np.zeros_like(scale)
    else:
        scale = _divide(hi - lo, f32(qmax - qmin), recip_scale)
        scale = np.where(scale > 0, scale, f32(1)).astype(f32)
        zp = np.clip(np.rint(-lo / scale), qmin, qmax).astype(f32)
    values, scale_out, zp_out = outs
    scale_out[...] = scale
    zp_out[...] = zp
    # The levels go a block of rows at a time through one small float buffer that
    # stays in cache (no leaf-sized float temporary to allocate and page in).
    divisor = np.float32(1) / scale if recip_levels else scale
    rows = max(1, _BLOCK // max(1, x[0].size))
    buf = np.empty((min(rows, x.shape[0]), *x.shape[1:]), f32)
    per_row = divisor.shape[0] > 1  # a scale per leading index: cut it with the rows
    for r in range(0, x.shape[0], rows):
        xs = x[r : r + rows]
        levels = buf[: len(xs)]
        d = divisor[r : r + rows] if per_row else divisor
        (np.multiply if recip_levels else np.divide)(xs, d, out=levels)
        np.rint(levels, out=levels)
        if not symmetric:
            levels += zp[r : r + rows] if per_row else zp
        np.clip(levels, qmin, qmax, out=levels)
        values[r : r + rows] = levels  # exact: clipped integers


def quantize(x, mask, bits: int, symmetric: bool, keep: tuple[int, ...], stacked: tuple[int, ...]):
    """``(values, scale, zero_point)`` numpy arrays, as ``_uniform._quantize_body`` returns."""
    x = np.asarray(x)
    mask = None if mask is None else np.asarray(mask)
    dtype = (np.int8 if bits <= 8 else np.int16) if symmetric else (
        np.uint8 if bits <= 8 else np.uint16)
    kshape = tuple(n if i in keep else 1 for i, n in enumerate(x.shape))
    values = np.empty(x.shape, dtype)
    scale = np.empty(kshape, np.float32)
    zp = np.empty(kshape, np.float32)
    red = tuple(i for i in range(x.ndim) if i not in keep)
    # which divisions the program on the whole leaf turns into reciprocal products
    recip = (scale.size > 1, scale.size < x.size)
    if 0 in keep and 0 in stacked and x.ndim >= 2:
        inner = tuple(i - 1 for i in red)
        for i in range(x.shape[0]):
            outs = (values[i], scale[i], zp[i])
            _slice(x[i], None if mask is None else mask[i], bits, symmetric, inner, outs, *recip)
    else:
        _slice(x, mask, bits, symmetric, red, (values, scale, zp), *recip)
    return values, scale, zp
