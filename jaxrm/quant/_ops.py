"""Operations on quantized weights: the matmul/conv/gather rules behind ``quantized``.

Each rule receives the quantized leaf itself (never a float copy of it) and
either dequantizes it right at the op (weight-only) or multiplies in integers
(``int8 x int8 -> int32`` through ``preferred_element_type``) and rescales.
The functions here are plain JAX; ``_execute`` registers them with quax.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxrm.quant._types import Codebook, QArray, expand_groups

INT8_MAX = 127


def _keepdims(s: jax.Array, ndim: int) -> jax.Array:
    return jnp.reshape(s, (1,) * (ndim - s.ndim) + tuple(s.shape))


def quantize_activation(x: jax.Array, reduce: tuple[int, ...], step: jax.Array | None):
    """``(int8 levels, step)``: symmetric int8 of ``x`` with a dynamic range over
    ``reduce`` (kept dims) or a fixed ``step`` (a calibrated static range)."""
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if step is None:
        amax = jnp.max(jnp.abs(xf), axis=reduce, keepdims=True)
        step = jnp.where(amax > 0, amax / INT8_MAX, jnp.ones_like(amax))
    else:
        step = _keepdims(jnp.asarray(step, xf.dtype), xf.ndim)
    levels = jnp.clip(jnp.round(xf / step), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    return levels, step


def _scale_to_out(s, contract, batch, side: str, n_other_free: int) -> jax.Array:
    """An operand's scale (its rank, 1 on contracted axes) in ``dot_general``'s
    output layout ``(batch, lhs free, rhs free)``."""
    free = [i for i in range(s.ndim) if i not in contract and i not in batch]
    s = jnp.transpose(s, (*batch, *free, *contract))
    s = s.reshape(s.shape[: len(batch) + len(free)])
    if side == "lhs":
        return s.reshape(*s.shape, *([1] * n_other_free))
    nb = len(batch)
    return s.reshape(*s.shape[:nb], *([1] * n_other_free), *s.shape[nb:])


def check_integer_weight(leaf: Any, path: str, contract: tuple[int, ...]) -> None:
    """Raises unless ``leaf`` can be multiplied in int8 along ``contract``: at
    most 8 bits, and scales varying along at most one contracted axis (groups)."""
    if not isinstance(leaf, QArray):
        return
    if leaf.bits > 8:
        raise ValueError(f"int8 activations: leaf {path!r} has {leaf.bits}-bit weights (> 8)")
    _group_axis(leaf, path, contract)


def _group_axis(leaf: QArray, path: str, contract) -> int | None:
    """The contracted axis along which ``leaf``'s scales vary (its groups), or ``None``."""
    scale = _keepdims(leaf.scale, len(leaf.shape))
    varying = [a for a in contract if scale.shape[a] != 1]
    if len(varying) > 1:
        raise ValueError(
            f"int8 activations: leaf {path!r} has scales that vary along several contracted "
            f"axes {varying}; run it weight-only (activations=None)"
        )
    return varying[0] if varying else None


def _weight_integers(leaf: QArray) -> tuple[jax.Array, jax.Array | None]:
    """``(w, z)``: int8 levels and (integral, float) zero points of ``leaf`` with
    ``values - zero_point == w - z``; ``z`` is ``None`` for symmetric leaves.

    8-bit asymmetric levels (0..255) are shifted by -128 into int8, their zero
    points with them. Masked entries take the level ``z`` (so ``w - z == 0``)."""
    v = leaf.integers()
    nd = len(leaf.shape)
    if leaf.symmetric:
        w, z, fill = v.astype(jnp.int8), None, jnp.zeros((), jnp.int8)
    else:
        off = 128 if leaf.bits == 8 else 0
        w = (v.astype(jnp.int16) - off).astype(jnp.int8)
        z = _keepdims(leaf.zero_point, nd) - off
        fill = expand_groups(z, tuple(leaf.shape), leaf.group_size or 1).astype(jnp.int8)
    if leaf.mask is not None:
        w = jnp.where(leaf.mask, w, fill)
    return w, z


def _split(a: jax.Array, axis: int, size: int) -> jax.Array:
    """``a`` with ``axis`` split into ``(groups, size)``, zero-padded to whole groups."""
    n = a.shape[axis]
    groups = -(-n // size)
    if groups * size != n:
        a = jnp.pad(a, [(0, groups * size - n) if i == axis else (0, 0) for i in range(a.ndim)])
    return a.reshape(*a.shape[:axis], groups, size, *a.shape[axis + 1 :])


def _split_dims(contract, batch, axis: int | None):
    """Contracted and batch axes after splitting ``axis`` into ``(groups, size)``:
    the group axis becomes the first batch axis, the size axis is contracted."""
    if axis is None:
        return tuple(contract), tuple(batch)
    m = lambda a: a + 1 if a > axis else a
    return (
        tuple(axis + 1 if a == axis else m(a) for a in contract),
        (axis, *(m(a) for a in batch)),
    )


def _split_field(a: jax.Array, axis: int | None) -> jax.Array:
    """A field with a size-1 or group axis ``axis`` reshaped as ``_split`` does."""
    if axis is None:
        return a
    return a.reshape(*a.shape[: axis + 1], 1, *a.shape[axis + 1 :])


def int_dot(x, leaf: QArray, *, weight_side: str, step, params: dict) -> jax.Array:
    """``dot_general`` of float ``x`` and quantized ``leaf`` in int8 -> int32, rescaled.

    With ``x ≈ sx * xq`` (int8, a range per row) and ``w = sw * (wq - z)``:
    ``x·w = sx * sw * (xq·wq - z * sum(xq))``, the sum over the contracted
    entries (the zero-point term, asymmetric weights only). Group-wise scales
    (and zero points) split the contraction into groups: one int32 partial dot
    per group (the groups a batch axis of one ``dot_general``), each rescaled
    by its group's scale, then summed."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    xc, xb, wc, wb = (lc, lb, rc, rb) if weight_side == "rhs" else (rc, rb, lc, lb)
    xq, sx = quantize_activation(x, tuple(xc), step)
    wq, z = _weight_integers(leaf)
    nd = wq.ndim
    sw = _keepdims(leaf.scale, nd)
    dw = _group_axis(leaf, "", tuple(wc))
    dx = None if dw is None else xc[list(wc).index(dw)]
    if dw is not None:
        size = leaf.group_size or -(-leaf.shape[dw] // sw.shape[dw])
        xq, wq = _split(xq, dx, size), _split(wq, dw, size)
        sx, sw = _split_field(sx, dx), _split_field(sw, dw)
        z = None if z is None else _split_field(z, dw)
    xc2, xb2 = _split_dims(xc, xb, dx)
    wc2, wb2 = _split_dims(wc, wb, dw)
    dims = ((xc2, wc2), (xb2, wb2)) if weight_side == "rhs" else ((wc2, xc2), (wb2, xb2))
    ops = (xq, wq) if weight_side == "rhs" else (wq, xq)
    acc = lax.dot_general(*ops, dims, precision=None, preferred_element_type=jnp.int32)
    n_x_free = xq.ndim - len(xc2) - len(xb2)
    n_w_free = wq.ndim - len(wc2) - len(wb2)
    x_side, w_side = ("lhs", "rhs") if weight_side == "rhs" else ("rhs", "lhs")
    x_out = lambda a: _scale_to_out(a, xc2, xb2, x_side, n_w_free)
    w_out = lambda a: _scale_to_out(a, wc2, wb2, w_side, n_x_free)
    if z is not None:
        xsum = jnp.sum(xq.astype(jnp.int32), axis=xc2, keepdims=True)
        acc = acc - w_out(z).astype(jnp.int32) * x_out(xsum)
    y = acc.astype(jnp.float32) * w_out(sw)
    if dw is not None:
        y = jnp.sum(y, axis=0)
        sx = jnp.squeeze(x_out(sx), axis=0)
    else:
        sx = x_out(sx)
    out_dtype = params.get("preferred_element_type") or jnp.result_type(x.dtype, leaf.dtype)
    return (y * sx).astype(out_dtype)


def int_conv(x, leaf: QArray, *, step, params: dict) -> jax.Array:
    """``conv_general_dilated`` in int8 -> int32: dynamic range per example (or a
    static ``step``), weight scales per output feature.

    Asymmetric weights: ``conv(xq, wq - z) = conv(xq, wq) - z * conv(xq, 1)``,
    the second term the sum of ``xq`` over each receptive field (a convolution
    with a kernel of ones). Group-wise scales along the input features (an
    ungrouped convolution): one int32 convolution per group of input features,
    each rescaled by its scales, summed."""
    dn = params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    reduce = tuple(i for i in range(x.ndim) if i != lhs_spec[0])
    xq, sx = quantize_activation(x, reduce, step)
    wq, z = _weight_integers(leaf)
    kw = {k: v for k, v in params.items() if k not in ("preferred_element_type", "precision")}
    conv = lambda a, b: lax.conv_general_dilated_p.bind(
        a, b, precision=None, preferred_element_type=jnp.int32, **kw
    )
    ndim = x.ndim
    out_shape = [-1 if i == out_spec[1] else 1 for i in range(ndim)]
    per_feature = lambda a: jnp.reshape(jnp.moveaxis(a, rhs_spec[0], 0).reshape(-1), out_shape)
    sw = _keepdims(leaf.scale, wq.ndim)
    cin = rhs_spec[1]
    groups = sw.shape[cin]
    size = leaf.group_size or -(-leaf.shape[cin] // groups)
    if groups > 1 and params.get("feature_group_count", 1) != 1:
        raise ValueError("group-wise scales in a grouped (depthwise) convolution")
    y = 0.0
    for g in range(groups):
        lo, hi = g * size, min((g + 1) * size, leaf.shape[cin])
        xg = xq if groups == 1 else lax.slice_in_dim(xq, lo, hi, axis=lhs_spec[1])
        wg = wq if groups == 1 else lax.slice_in_dim(wq, lo, hi, axis=cin)
        acc = conv(xg, wg)
        if z is not None:
            zg = lax.slice_in_dim(z, g, g + 1, axis=cin) if groups > 1 else z
            ones = jnp.ones(wg.shape, jnp.int8)
            if params.get("feature_group_count", 1) == 1:  # one output feature suffices
                ones = lax.slice_in_dim(ones, 0, 1, axis=rhs_spec[0])
            acc = acc - per_feature(zg).astype(jnp.int32) * conv(xg, ones)
        sg = lax.slice_in_dim(sw, g, g + 1, axis=cin) if groups > 1 else sw
        y = y + acc.astype(jnp.float32) * per_feature(sg)
    sx_out = jnp.reshape(sx, [-1 if i == out_spec[0] else 1 for i in range(ndim)])
    if sx.size == 1:
        sx_out = jnp.reshape(sx, (1,) * ndim)
    out_dtype = params.get("preferred_element_type") or jnp.result_type(x.dtype, leaf.dtype)
    return (y * sx_out).astype(out_dtype)


def check_conv_weight(leaf: Any, path: str, rhs_spec: tuple[int, ...], groups: int = 1) -> None:
    """Raises unless the integer convolution takes ``leaf`` (groups along the
    input features only, and only in an ungrouped convolution)."""
    if isinstance(leaf, QArray):
        contract = tuple(a for a in range(len(leaf.shape)) if a != rhs_spec[0])
        check_integer_weight(leaf, path, contract)
        d = _group_axis(leaf, path, contract)
        if d is not None and (d != rhs_spec[1] or groups != 1):
            raise ValueError(
                f"int8 activations: leaf {path!r} has group-wise scales along kernel axis {d}; "
                "the integer convolution takes groups along the input features of an "
                "ungrouped convolution only: run it weight-only (activations=None)"
            )


# ----------------------------------------------------------------------------- gathers


def _gather_field(a: jax.Array, indices: jax.Array, full: tuple[int, ...], params: dict):
    """Gathers field ``a`` (a scale or zero point: per axis size 1, the full size,
    or groups) with the gather ``params`` meant for an operand of shape ``full``.

    Axes where ``a`` has size 1 are read at index 0 with a slice of 1, so the
    result broadcasts against the gathered values; a group-wise axis must be
    sliced whole (then ``expand_groups`` spreads it)."""
    dn = params["dimension_numbers"]
    a = _keepdims(a, len(full))
    sizes = list(params["slice_sizes"])
    keep_col = []
    for d in dn.start_index_map:
        keep_col.append(1 if a.shape[d] == full[d] else 0)
        if a.shape[d] not in (1, full[d]):
            raise ValueError(f"a gather indexing axis {d}, which holds group-wise scales")
    for d in range(len(full)):
        if a.shape[d] == 1:
            sizes[d] = 1
        elif a.shape[d] != full[d]:
            if sizes[d] != full[d]:
                raise ValueError(f"a gather slicing part of axis {d}, which holds groups")
            sizes[d] = a.shape[d]
    if not all(keep_col):
        indices = indices * jnp.asarray(keep_col, indices.dtype)
    return lax.gather_p.bind(a, indices, **dict(params, slice_sizes=tuple(sizes)))


def gather(leaf: Any, indices: jax.Array, params: dict) -> jax.Array:
    """A gather (embedding lookup) from a quantized leaf: integer rows are gathered
    first and only the gathered rows are dequantized."""
    full = tuple(leaf.shape)
    int_params = dict(params, fill_value=0)
    if isinstance(leaf, Codebook):
        idx = lax.gather_p.bind(leaf.indices, indices, **int_params)
        if leaf.centroids.ndim != 1:
            raise ValueError("a gather from a leaf with per-slice codebooks")
        x = jnp.take(leaf.centroids, idx.astype(jnp.int32), axis=0)
        if leaf.mask is not None:
            keep = lax.gather_p.bind(leaf.mask, indices, **int_params)
            x = jnp.where(keep, x, jnp.zeros((), x.dtype))
        return x.astype(leaf.dtype)
    values = leaf.integers()
    v = lax.gather_p.bind(values, indices, **int_params)
    shape_out = v.shape
    scale = _gather_field(leaf.scale, indices, full, params)
    zp = _gather_field(leaf.zero_point, indices, full, params)
    scale = expand_groups(scale, shape_out, leaf.group_size)
    zp = expand_groups(zp, shape_out, leaf.group_size)
    x = (v.astype(jnp.float32) - zp) * scale
    if leaf.mask is not None:
        keep = lax.gather_p.bind(leaf.mask, indices, **dict(params, fill_value=False))
        x = jnp.where(keep, x, jnp.zeros((), x.dtype))
    return x.astype(leaf.dtype)


# ----------------------------------------------------------------------------- layout ops


def transpose(leaf: Any, permutation: tuple[int, ...]) -> Any:
    """The quantized leaf with its axes permuted (packed values are unpacked first)."""
    perm = tuple(permutation)
    if isinstance(leaf, Codebook):
        c = leaf.centroids
        if c.ndim > 1:
            c = jnp.transpose(c, (*perm, c.ndim - 1))
        return leaf.replace(
            indices=jnp.transpose(leaf.indices, perm),
            centroids=c,
            mask=None if leaf.mask is None else jnp.transpose(leaf.mask, perm),
        )
    nd = len(leaf.shape)
    return leaf.replace(
        values=jnp.transpose(leaf.integers(), perm),
        scale=jnp.transpose(_keepdims(leaf.scale, nd), perm),
        zero_point=jnp.transpose(_keepdims(leaf.zero_point, nd), perm),
        mask=None if leaf.mask is None else jnp.transpose(leaf.mask, perm),
        packed=False,
        axis=None if leaf.axis is None else perm.index(leaf.axis),
    )
