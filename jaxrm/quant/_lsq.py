"""Learned step size quantization (LSQ, Esser et al. 2020) as a trainable pytree.

``lsq(params, bits)`` turns each selected weight into an ``LsqArray`` holding
the float weight and its step size, both float leaves, so ``optax`` updates
them like any parameters. ``lsq_apply`` gives the fake-quantized weights for the
forward pass; its gradient reaches the weight through the straight-through
estimator and the step through LSQ's formula (eq. 3 of the paper), scaled by
``1 / sqrt(N * Q_P)``. ``lsq_export`` turns the trained tree into ``QArray``
leaves that [`quantized`][jaxrm.quant.quantized] runs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxrm import tree as jtree
from jaxrm.quant import _common
from jaxrm.quant._types import QArray
from jaxrm.quant._uniform import _keep_axes, _reduce_axes, grid, storage_dtype


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LsqArray:
    """A weight with a learned quantization step: ``round(clip(w / s, -Q, Q)) * s``.

    Attributes:
      weight: the float weight.
      step: float step size, the weight's rank with size 1 off the per-channel
        and stacked axes (``(1,) * ndim`` per tensor).
      bits: bits of the symmetric grid ``[-Q, Q]``, ``Q = 2**(bits-1) - 1`` (static).
    """

    weight: jax.Array
    step: jax.Array
    bits: int = dataclasses.field(default=8, metadata={"static": True})

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)


def is_lsq(x: Any) -> bool:
    return isinstance(x, LsqArray)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def lsq_quantize(w: jax.Array, s: jax.Array, q: int, grad_scale: float) -> jax.Array:
    """``round(clip(w / s, -q, q)) * s`` with LSQ's gradients to ``w`` and ``s``."""
    return jnp.round(jnp.clip(w / s, -q, q)) * s


def _lsq_fwd(w, s, q, grad_scale):
    return lsq_quantize(w, s, q, grad_scale), (w, s)


def _lsq_bwd(q, grad_scale, res, g):
    w, s = res
    v = w / s
    inside = (v > -q) & (v < q)
    dw = jnp.where(inside, g, jnp.zeros_like(g))
    # d(w_hat)/ds: round(v) - v inside, -q below, q above (Esser et al., eq. 3).
    dv = jnp.where(inside, jnp.round(v) - v, jnp.where(v <= -q, -float(q), float(q)))
    red = tuple(i for i in range(g.ndim) if s.shape[i] == 1 and g.shape[i] != 1)
    ds = jnp.sum(g * dv, axis=red, keepdims=True).reshape(s.shape) * grad_scale
    return dw, ds


lsq_quantize.defvjp(_lsq_fwd, _lsq_bwd)


def _initial_step(w: jax.Array, q: int, keep: tuple[int, ...]) -> jax.Array:
    """LSQ's init: ``2 * mean(|w|) / sqrt(Q)`` per tensor (or per kept slice)."""
    m = jnp.mean(jnp.abs(w.astype(jnp.float32)), axis=_reduce_axes(w.ndim, keep), keepdims=True)
    s = 2.0 * m / math.sqrt(q)
    return jnp.where(s > 0, s, jnp.ones_like(s))


def lsq(
    params: Any,
    bits: Any = 8,
    *,
    axis: Any = None,
    where: jtree.Where = None,
    stacked: Any = None,
) -> Any:
    """Wraps the selected weights of ``params`` in trainable ``LsqArray`` leaves.

    The step starts at ``2 * mean(|w|) / sqrt(Q)`` (the paper's init), per
    tensor, per channel along ``axis``, and per stacked slice.

    Args:
      params: any pytree of parameters.
      bits: bits in ``[2, 16]`` (a per-leaf setting; ``None`` leaves stay float).
      axis: ``None`` or the per-channel axis (a per-leaf setting).
      where: which leaves (default ``jaxrm.tree.weights``).
      stacked: stacked axes as a per-leaf setting (default: inferred).

    Returns:
      A pytree of ``params``' structure with ``LsqArray`` leaves; every leaf
      is a float array, so ``optax`` trains weights and steps together.

    Raises:
      ValueError / TypeError: as [`uniform`][jaxrm.quant.uniform] for bits, axis and leaves.
    """
    new = {}
    for t in _common.grid_targets(params, where, bits, axis, stacked):
        ax = _common.check_axis(t.path, t.leaf, t.settings["axis"])
        q = grid(t.bits, True)[1]
        w = jnp.asarray(t.leaf)
        new[t.path] = LsqArray(w, _initial_step(w, q, _keep_axes(ax, t.axes.stacked)), t.bits)
    return _common.rebuild(params, where, new)


def _grad_scale(x: LsqArray) -> float:
    per_step = max(1, math.prod(x.shape) // max(1, math.prod(x.step.shape)))
    return 1.0 / math.sqrt(per_step * grid(x.bits, True)[1])


def lsq_apply(tree: Any) -> Any:
    """The fake-quantized float weights of an ``lsq`` tree (use in the loss)."""
    return jax.tree.map(
        lambda x: (
            lsq_quantize(x.weight, x.step, grid(x.bits, True)[1], _grad_scale(x)).astype(
                x.weight.dtype
            )
            if is_lsq(x)
            else x
        ),
        tree,
        is_leaf=is_lsq,
    )


def lsq_export(tree: Any) -> Any:
    """Turns each ``LsqArray`` into the ``QArray`` of its grid (exactly ``lsq_apply``'s values).

    Raises:
      ValueError: a step that is not positive (a concrete check).
    """

    def export(path: str, x: LsqArray) -> QArray:
        q = grid(x.bits, True)[1]
        s = jnp.asarray(x.step, jnp.float32)
        if _common.is_concrete(s) and not bool(jnp.all(s > 0)):
            raise ValueError(f"LsqArray at {path!r} has a step <= 0; it cannot be exported")
        values = jnp.round(jnp.clip(x.weight / s, -q, q)).astype(storage_dtype(x.bits, True))
        return QArray(values, s, jnp.zeros_like(s), bits=x.bits, dtype=str(x.weight.dtype))

    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_lsq)
    out = [export(jtree.path_str(kp), x) if is_lsq(x) else x for kp, x in flat]
    return jax.tree_util.tree_unflatten(treedef, out)
