"""Uniform (affine) quantization: post-training ``uniform`` and QAT ``fake_quant``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import tree as jtree
from jaxrm.quant import _common, _uniform_host
from jaxrm.quant._types import QArray, expand_groups, pack_int4

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


def _reduce_axes(ndim: int, keep: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(i for i in range(ndim) if i not in keep)


def _keep_axes(axis: int | tuple[int, ...] | None, stacked: tuple[int, ...] = ()
               ) -> tuple[int, ...]:
    channel = () if axis is None else (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(set(stacked) | set(channel)))


CHANNEL = "channel"


def is_axis_setting(x: Any) -> bool:
    """A per-leaf ``axis`` value: ``None``, an int, or ``"channel"``."""
    return (isinstance(x, str) and x == CHANNEL) or _common.is_axis_like(x)



def _split_groups(x, axis: int, size: int):
    """``x`` with ``axis`` split into ``(groups, size)``, zero-padded to whole groups.

    Zeros change no min/max range (every range holds 0) and quantize exactly,
    so they change no "minmax" or "mse" range either.
    """
    n = x.shape[axis]
    groups = -(-n // size)
    pad = groups * size - n
    if pad:
        x = jnp.pad(x, [(0, pad) if i == axis else (0, 0) for i in range(x.ndim)])
    return x.reshape(*x.shape[:axis], groups, size, *x.shape[axis + 1 :])


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


_STATIC = ("symmetric", "keep", "group", "calibration", "percentile", "wide", "pack")


def _quantize_body(x, mask, bits, *, symmetric, keep, group, calibration, percentile, wide, pack):
    # ``bits`` is traced so that one compilation serves every bit width of a
    # storage dtype (``wide``: 16-bit storage).
    xf = x.astype(_compute_dtype(x.dtype))
    if mask is not None:
        xf = jnp.where(mask, xf, jnp.zeros((), xf.dtype))
    if group is None:
        red = _reduce_axes(xf.ndim, keep)
        lo, hi = _calibrated_range(xf, bits, symmetric, red, calibration, percentile)
        scale, zero_point = _scale_zero_point(lo, hi, bits, symmetric)
    else:
        d, size = group
        split_keep = (*tuple(k + (k > d) for k in keep), d)
        xs = _split_groups(xf, d, size)
        red = _reduce_axes(xs.ndim, split_keep)
        lo, hi = _calibrated_range(xs, bits, symmetric, red, calibration, percentile)
        scale, zero_point = _scale_zero_point(lo, hi, bits, symmetric)
        scale, zero_point = scale.squeeze(d + 1), zero_point.squeeze(d + 1)
    values = _levels(
        xf,
        expand_groups(scale, xf.shape, None if group is None else group[1]),
        expand_groups(zero_point, xf.shape, None if group is None else group[1]),
        bits,
        symmetric,
    )
    values = values.astype(storage_dtype(16 if wide else 8, symmetric))
    if pack:
        values = pack_int4(values)
    return values, scale.astype(jnp.float32), zero_point.astype(jnp.float32)


_quantize_arrays = jax.jit(_quantize_body, static_argnames=_STATIC)


def _quantize(
    x,
    bits,
    symmetric,
    axis,
    calibration,
    percentile,
    *,
    stacked=(),
    group=None,
    mask=None,
    pack=False,
    keep=None,
):
    channel = keep if keep is not None else axis
    pack = bool(pack and bits <= 4 and x.ndim > 0 and x.shape[-1] % 2 == 0)
    if _uniform_host.applies(x, mask, calibration, group, pack):
        # Eager on the host: numpy, no compilation for a few passes of work (and
        # device_put, which compiles nothing, where jnp.asarray compiles per shape).
        values, scale, zero_point = (jax.device_put(a) for a in _uniform_host.quantize(
            x, mask, bits, symmetric, _keep_axes(channel, stacked), tuple(stacked)))
        return QArray(values, scale, zero_point, mask=mask,
                      bits=bits, axis=axis, dtype=str(x.dtype), packed=False, group_size=None)
    x = jnp.asarray(x)
    # One program over the whole leaf, stacked slices included (the stacked axes are
    # kept axes of the scale): measured as fast as the slices as separate leaves.
    values, scale, zero_point = _quantize_arrays(
        x,
        mask,
        jnp.int32(bits),
        symmetric=symmetric,
        keep=_keep_axes(channel, stacked),
        group=group,
        calibration=calibration,
        percentile=percentile,
        wide=bits > 8,
        pack=pack,
    )
    return QArray(
        values,
        scale,
        zero_point,
        mask=mask,
        bits=bits,
        axis=axis,
        dtype=str(x.dtype),
        packed=pack,
        group_size=None if group is None else group[1],
    )


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
    group_size: Any = None,
    stacked: Any = None,
    masks: Any = None,
    pack: bool = False,
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

    Stacked leaves (scan-over-layers, fused tensors; ``stacked=``, or
    inferred from the framework's partition metadata) get their own ranges per
    slice: the scale keeps the stacked axes. ``group_size=g`` gives one scale
    per ``g`` consecutive entries along the leaf's contraction (input) axis
    (the last contracted axis of its layout, e.g. the ``in`` axis of a Flax
    Dense ``(in, out)`` kernel; the feature axis of an embedding), per output
    channel when ``axis`` is the output axis (per row of an embedding with
    ``axis=0``); the last group may be shorter. ``masks`` (``False`` = pruned) are
    stored in the ``QArray``: pruned entries take no part in the range (they
    count as 0), are stored as the grid's 0 and decode to exactly 0.
    ``pack=True`` stores leaves of at most 4 bits whose last axis is even two
    entries per byte (``QArray.packed``); others stay one per byte.

    Works under ``jax.jit`` (the NaN/Inf check only runs on concrete arrays).

    Args:
      params: any pytree of parameters.
      bits: integer bits in ``[2, 16]``; an int, a pytree of ``params``'
        structure holding ints (``None`` leaves stay float), or a callable
        ``(path, leaf) -> int | None``.
      symmetric: signed grid with zero point 0, or unsigned grid with a zero point.
      axis: ``None`` for one scale per tensor, the per-channel axis (e.g.
        ``-1`` for the output features of a Flax kernel), or ``"channel"``:
        one scale per output channel read off each leaf's layout (all output
        axes of a kernel, so ``(heads, head_dim)`` of an attention kernel
        ``(emb, heads, head_dim)``; the rows of an embedding table, which an
        int ``-1`` would not give); a per-leaf setting.
      calibration: ``"minmax"``, ``"percentile"`` or ``"mse"``.
      percentile: the percentile in ``(50, 100]`` used by ``"percentile"``.
      where: which leaves to quantize (see ``jaxrm.tree.select``); default:
        ``jaxrm.tree.weights``.
      group_size: ``None`` or entries per scale along the contraction axis; a
        per-leaf setting.
      stacked: the stacked axis (int, tuple or ``None``) as a per-leaf
        setting; default: inferred from the layout.
      masks: ``None`` or a pytree of ``params``' structure with ``bool``
        arrays (``False`` = pruned) or ``None`` per leaf.
      pack: store 4-bit (or fewer) values two per byte.

    Returns:
      A pytree of ``params``' structure with ``QArray`` leaves where quantized.

    Raises:
      ValueError: ``bits`` out of range, unknown ``calibration``, bad
        ``percentile`` or ``axis`` (``"channel"`` on a leaf whose layout
        names no output channel, e.g. a bias), NaN/Inf in a selected leaf, a ``bits``
        pytree of another structure, or ``where`` selecting nothing.
      TypeError: ``where`` selects an integer or non-array leaf, or ``bits`` is
        not an int.
    """
    _common.check_choice(calibration, CALIBRATIONS, "calibration")
    percentile = _check_percentile(percentile)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {symmetric!r}")
    if not isinstance(pack, bool):
        raise TypeError(f"pack must be a bool, got {pack!r}")
    mask_of = _common.masks_by_path(params, masks)
    new = {}
    group_setting = {"group_size": (group_size, _common.is_axis_like)}
    for t in _common.grid_targets(params, where, bits, axis, stacked, settings=group_setting,
                                  is_axis=is_axis_setting):
        if isinstance(t.settings["axis"], str):
            keep = t.axes.channels(t.path, t.leaf.ndim)
            ax = keep[0]
        else:
            ax = _common.check_axis(t.path, t.leaf, t.settings["axis"])
            keep = () if ax is None else (ax,)
        if ax is not None and ax in t.axes.stacked:
            raise ValueError(f"axis={ax} of leaf {t.path!r} is its stacked axis {t.axes.stacked}")
        group = _group(t, t.settings["group_size"], keep, calibration)
        new[t.path] = _quantize(
            t.leaf,
            t.bits,
            symmetric,
            ax,
            calibration,
            percentile,
            stacked=t.axes.stacked,
            group=group,
            mask=mask_of(t.path, t.leaf),
            pack=pack,
            keep=keep,
        )
    return _common.rebuild(params, where, new)



def _group(t: _common.Target, size: Any, keep: tuple[int, ...], calibration: str):
    """``(axis, size)`` of the scale groups of leaf ``t``, or ``None``."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"group_size at leaf {t.path!r} must be None or an int >= 1, got {size!r}")
    d = t.axes.group_axis
    if d is None:
        raise ValueError(
            f"group_size at leaf {t.path!r}: the leaf of shape {tuple(t.leaf.shape)} has no "
            "contraction axis in its layout (leave it out of group_size)"
        )
    if d in keep:
        raise ValueError(f"group_size at leaf {t.path!r}: axis={d} is the group axis")
    n = t.leaf.shape[d]
    if calibration == "percentile" and n % int(size):
        raise ValueError(
            f"group_size={int(size)} at leaf {t.path!r} does not divide its contraction "
            f"axis of {n} entries, which calibration='percentile' needs"
        )
    return d, int(size)
