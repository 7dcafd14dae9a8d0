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
    """Raises unless ``leaf`` can be multiplied in int8 along ``contract``."""
    if not isinstance(leaf, QArray):
        return
    if leaf.bits > 8:
        raise ValueError(f"int8 activations: leaf {path!r} has {leaf.bits}-bit weights (> 8)")
    if not leaf.symmetric:
        raise ValueError(
            f"int8 activations: leaf {path!r} is asymmetric (zero points); quantize it with "
            "symmetric=True or run it weight-only (activations=None)"
        )
    scale = _keepdims(leaf.scale, len(leaf.shape))
    if any(scale.shape[a] != 1 for a in contract):
        raise ValueError(
            f"int8 activations: leaf {path!r} has scales that vary along its contracted "
            f"axes {contract} (group-wise, group_size={leaf.group_size}); integer products "
            "need one scale per output channel: run it weight-only (activations=None)"
        )


def _integers(leaf: QArray) -> jax.Array:
    v = leaf.integers()
    if leaf.mask is not None:
        v = jnp.where(leaf.mask, v, jnp.zeros((), v.dtype))
    return v.astype(jnp.int8)


def int_dot(x, leaf: QArray, *, weight_side: str, step, params: dict) -> jax.Array:
    """``dot_general`` of float ``x`` and quantized ``leaf`` in int8 -> int32, rescaled."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    xc, xb, wc, wb = (lc, lb, rc, rb) if weight_side == "rhs" else (rc, rb, lc, lb)
    xq, sx = quantize_activation(x, tuple(xc), step)
    wq = _integers(leaf)
    ops = (xq, wq) if weight_side == "rhs" else (wq, xq)
    y = lax.dot_general(
        *ops, params["dimension_numbers"], precision=None, preferred_element_type=jnp.int32
    )
    sw = _keepdims(leaf.scale, wq.ndim)
    n_x_free = x.ndim - len(xc) - len(xb)
    n_w_free = wq.ndim - len(wc) - len(wb)
    if weight_side == "rhs":
        s = _scale_to_out(sx, xc, xb, "lhs", n_w_free) * _scale_to_out(sw, wc, wb, "rhs", n_x_free)
    else:
        s = _scale_to_out(sw, wc, wb, "lhs", n_x_free) * _scale_to_out(sx, xc, xb, "rhs", n_w_free)
    out_dtype = params.get("preferred_element_type") or jnp.result_type(x.dtype, leaf.dtype)
    return (y.astype(jnp.float32) * s).astype(out_dtype)


def int_conv(x, leaf: QArray, *, step, params: dict) -> jax.Array:
    """``conv_general_dilated`` in int8 -> int32: dynamic range per example (or a
    static ``step``), one weight scale per output feature."""
    dn = params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    reduce = tuple(i for i in range(x.ndim) if i != lhs_spec[0])
    xq, sx = quantize_activation(x, reduce, step)
    wq = _integers(leaf)
    kw = {k: v for k, v in params.items() if k not in ("preferred_element_type", "precision")}
    y = lax.conv_general_dilated_p.bind(
        xq, wq, precision=None, preferred_element_type=jnp.int32, **kw
    )
    ndim = y.ndim
    sx_out = jnp.reshape(sx, [-1 if i == out_spec[0] else 1 for i in range(ndim)])
    if sx.size == 1:
        sx_out = jnp.reshape(sx, (1,) * ndim)
    sw = _keepdims(leaf.scale, wq.ndim)
    sw_out = jnp.reshape(
        jnp.moveaxis(sw, rhs_spec[0], 0).reshape(-1),
        [-1 if i == out_spec[1] else 1 for i in range(ndim)],
    )
    out_dtype = params.get("preferred_element_type") or jnp.result_type(x.dtype, leaf.dtype)
    return (y.astype(jnp.float32) * sx_out * sw_out).astype(out_dtype)


def check_conv_weight(leaf: Any, path: str, rhs_spec: tuple[int, ...]) -> None:
    if isinstance(leaf, QArray):
        contract = tuple(a for a in range(len(leaf.shape)) if a != rhs_spec[0])
        check_integer_weight(leaf, path, contract)


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
