"""Gradient accumulation: a large batch as a scan over micro-batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm.tree import path_str

__all__ = ["accumulate"]


def accumulate(
    grad_fn: Callable[..., Any],
    micro_batches: int,
    *,
    batch_argnums: int | Sequence[int] = 1,
    reduce: str = "mean",
) -> Callable[..., Any]:
    """Splits the batch into micro-batches and combines ``grad_fn``'s outputs.

    The returned function has ``grad_fn``'s signature. It reshapes every leaf
    of the batch arguments from ``(B, ...)`` to ``(micro_batches, B //
    micro_batches, ...)``, runs ``grad_fn`` on each micro-batch in a
    ``lax.scan`` (so only one micro-batch's activations are live at a time),
    and averages (``reduce="mean"``) or sums (``"sum"``) every output leaf.
    For a loss that is a mean over examples, the mean over equal micro-batches
    is the full-batch mean, so the gradient equals the full-batch gradient.
    Sums are carried in at least float32.

    Args:
      grad_fn: e.g. ``jax.grad(loss)`` or ``jax.value_and_grad(loss)``; its
        outputs must be floating pytrees.
      micro_batches: the number of micro-batches; must divide the batch size.
      batch_argnums: the positions of the batch arguments (default: the second,
        as in ``grad_fn(params, batch)``).
      reduce: ``"mean"`` for mean losses, ``"sum"`` for summed losses.

    Returns:
      The accumulating function.

    Raises:
      ValueError: ``micro_batches`` is not positive, ``reduce`` is unknown, or
        (when called) a batch leaf's leading size is not divisible by
        ``micro_batches``.
      TypeError: ``grad_fn`` is not callable, ``micro_batches`` is not an
        int, ``batch_argnums`` not ints, ``reduce`` not a string, or (when
        called) an output leaf is not floating.
    """
    if not callable(grad_fn):
        raise TypeError(f"grad_fn must be callable, got {type(grad_fn).__name__}")
    if isinstance(micro_batches, bool) or not isinstance(micro_batches, int):
        raise TypeError(
            f"micro_batches must be an int, got {type(micro_batches).__name__} {micro_batches!r}"
        )
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be a positive integer, got {micro_batches!r}")
    argnums_ok = isinstance(batch_argnums, int) or (
        isinstance(batch_argnums, Sequence) and all(isinstance(i, int) for i in batch_argnums)
    )
    if isinstance(batch_argnums, bool) or not argnums_ok:
        raise TypeError(f"batch_argnums must be an int or a sequence of ints: {batch_argnums!r}")
    if not isinstance(reduce, str):
        raise TypeError(f"reduce must be a string, got {type(reduce).__name__}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    argnums = (batch_argnums,) if isinstance(batch_argnums, int) else tuple(batch_argnums)
    k = micro_batches

    def split(i: int, batch: Any) -> Any:
        def one(kp, x):
            x = jnp.asarray(x)
            if x.ndim == 0 or x.shape[0] % k:
                size = "a scalar" if x.ndim == 0 else f"leading size {x.shape[0]}"
                raise ValueError(
                    f"argument {i} leaf {path_str(kp)!r} has {size}, not divisible by "
                    f"micro_batches={k}"
                )
            return x.reshape(k, x.shape[0] // k, *x.shape[1:])

        return jax.tree_util.tree_map_with_path(one, batch)

    def accumulated(*args: Any) -> Any:
        for i in argnums:
            if not -len(args) <= i < len(args):
                raise ValueError(f"batch_argnums={batch_argnums!r}: no argument {i}")
        pos = [i % len(args) for i in argnums]
        micro = tuple(split(i, args[i]) for i in pos)

        def call(mb: tuple[Any, ...]) -> Any:
            a = list(args)
            for i, b in zip(pos, mb):
                a[i] = b
            return grad_fn(*a)

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(call, first)
        for kp, s in jax.tree_util.tree_flatten_with_path(shapes)[0]:
            if not jnp.issubdtype(s.dtype, jnp.inexact):
                raise TypeError(
                    f"grad_fn output leaf {path_str(kp)!r} has dtype {s.dtype}; accumulate "
                    "sums floating outputs only"
                )
        acc_dtype = lambda d: jnp.promote_types(d, jnp.float32)
        init = jax.tree.map(lambda s: jnp.zeros(s.shape, acc_dtype(s.dtype)), shapes)

        def body(carry, mb):
            out = call(mb)
            return jax.tree.map(lambda c, o: c + o.astype(c.dtype), carry, out), None

        total, _ = jax.lax.scan(body, init, micro)
        scale = 1.0 / k if reduce == "mean" else 1.0
        return jax.tree.map(
            lambda t, s: (t * np.asarray(scale, t.dtype)).astype(s.dtype), total, shapes
        )

    return accumulated
