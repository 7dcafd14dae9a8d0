"""``collect``: stream calibration batches through a model and accumulate statistics."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import tree as jtree
from jaxrm.calib._stats import LeafStats, Stats
from jaxrm.calib._trace import Tracer

__all__ = ["collect"]


def _index_array(shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64))
    dtype = np.int32 if n < 2**31 else np.int64
    return np.arange(n, dtype=dtype).reshape(shape)


class _Program:
    """One traced-and-compiled statistics pass for one batch structure."""

    def __init__(self, fn, treedef, leaves, tracked, names, batch):
        b_leaves, b_def = jax.tree_util.tree_flatten(batch)
        n = len(leaves)

        def model(*flat):
            params = jax.tree_util.tree_unflatten(treedef, flat[:n])
            return fn(params, jax.tree_util.tree_unflatten(b_def, flat[n:]))

        closed = jax.make_jaxpr(model)(*leaves, *b_leaves)
        shapes = {i: tuple(np.shape(leaves[i])) for i in tracked}
        self.meta: dict[tuple[int, int], Any] = {}
        self.skipped: list[str] = []

        def stats(*flat):
            tracer = Tracer(shapes, names)
            provs = [(i, _index_array(shapes[i])) if i in shapes else None for i in range(n)]
            tracer.run(closed.jaxpr, closed.consts, list(flat), provs + [None] * len(b_leaves))
            acc: dict[tuple[int, int], list] = {}
            meta: dict[tuple[int, int], Any] = {}
            for use, (h, asum, amax, rows) in tracer.uses:
                key = (use.leaf, use.slice_index)
                if key in acc:
                    if meta[key] != use:
                        raise ValueError(
                            f"leaf {names[use.leaf]!r} feeds matmuls with different layouts "
                            f"({meta[key]} and {use}); pass where= to leave it out"
                        )
                    a = acc[key]
                    acc[key] = [a[0] + h, a[1] + asum, jnp.maximum(a[2], amax), a[3] + rows]
                else:
                    acc[key], meta[key] = [h, asum, amax, rows], use
            self.meta, self.skipped = meta, tracer.skipped
            return {f"{k[0]}:{k[1]}": tuple(v[:3]) for k, v in acc.items()}, {
                f"{k[0]}:{k[1]}": v[3] for k, v in acc.items()
            }

        jitted = jax.jit(stats)
        self.call = lambda flat: jitted(*flat)
        self.n_batch = len(b_leaves)


def _signature(batch) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(batch)
    return treedef, tuple((tuple(np.shape(x)), str(jnp.result_type(x))) for x in leaves)


def collect(
    fn: Callable[[Any, Any], Any],
    params: Any,
    batches: Iterable[Any],
    *,
    where: jtree.Where = None,
) -> Stats:
    """Runs ``fn(params, batch)`` on each batch and records per-weight input statistics.

    Every selected leaf that feeds a ``dot_general`` (Dense, DenseGeneral,
    Einsum, attention projections with head axes, Equinox Linear) or a
    ``conv_general_dilated`` (as im2col patches) gets, per stacked slice, the
    input second moment ``H = sum x^T x``, ``sum |x|`` and ``max |x|`` per input
    feature, and the row count. The captures come from a jaxpr interpreter
    (see ``docs/oneshot.md``), so Flax Linen, Flax NNX and Equinox models work
    alike and ``scan``-ned layers are recorded slice by slice. Each batch is
    reduced on the device in float32; batches are summed on the host in
    float64, so memory holds one ``d_in x d_in`` matrix per slice, never the
    activations of more than one batch.

    Args:
      fn: ``fn(params, batch)`` runs the model (its output is ignored), e.g.
        ``lambda p, x: model.apply({"params": p}, x)``.
      params: the parameter pytree ``fn`` takes (Linen dict, ``nnx.State``,
        an ``eqx.filter``-ed module, ...).
      batches: an iterable of batches (pytrees of arrays), read once.
      where: which leaves to record; ``None`` records every weight
        ([jaxrm.tree.weights][]) that feeds a matmul or convolution.

    Returns:
      A [jaxrm.calib.Stats][] mapping each recorded leaf path to its
      [jaxrm.calib.LeafStats][].

    Raises:
      ValueError: ``batches`` is empty, ``where`` selects nothing, an explicitly
        selected leaf never feeds a matmul or convolution, or a leaf feeds
        matmuls of different layouts.
      TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable fn(params, batch), got {type(fn).__name__}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = {i: jtree.path_str(kp) for i, (kp, _) in enumerate(flat)}
    leaves = [x for _, x in flat]
    chosen = set(jtree.selected(params, where))
    tracked = [
        i
        for i, x in enumerate(leaves)
        if names[i] in chosen
        and jtree.is_array(x)
        and jnp.issubdtype(jnp.result_type(x), jnp.floating)
    ]
    programs: dict[Any, _Program] = {}
    acc: dict[str, list[np.ndarray]] = {}
    meta: dict[str, Any] = {}
    skipped: list[str] = []
    n_batches = 0
    for batch in batches:
        sig = _signature(batch)
        if sig not in programs:
            programs[sig] = _Program(fn, treedef, leaves, tracked, names, batch)
        prog = programs[sig]
        stats, rows = prog.call([*leaves, *jax.tree_util.tree_leaves(batch)])
        for key, use in prog.meta.items():
            k = f"{key[0]}:{key[1]}"
            if k in meta and meta[k] != use:
                raise ValueError(f"leaf {names[key[0]]!r} changed layout between batches")
            meta[k] = use
            h, asum, amax = (np.asarray(a, np.float64) for a in stats[k])
            r = int(rows[k])
            if k in acc:
                a = acc[k]
                a[0] += h
                a[1] += asum
                np.maximum(a[2], amax, out=a[2])
                a[3] += r
            else:
                acc[k] = [h, asum, amax, r]
        skipped.extend(s for s in prog.skipped if s not in skipped)
        n_batches += 1
    if n_batches == 0:
        raise ValueError("batches is empty: calibration needs at least one batch")
    return _assemble(leaves, names, tracked, acc, meta, where, skipped, n_batches)


def _assemble(leaves, names, tracked, acc, meta, where, skipped, n_batches) -> Stats:
    by_leaf: dict[int, list] = {}
    for k, use in meta.items():
        by_leaf.setdefault(use.leaf, []).append((use, acc[k]))
    out: dict[str, LeafStats] = {}
    for i in tracked:
        if i not in by_leaf:
            if where is not None:
                raise ValueError(
                    f"where selects leaf {names[i]!r}, but it fed no matmul or convolution "
                    "that calibration could record"
                    + (f" (skipped: {'; '.join(skipped[:3])})" if skipped else "")
                )
            continue
        uses = by_leaf[i]
        u0 = uses[0][0]
        for u, _ in uses:
            if (u.stacked, u.contract, u.out) != (u0.stacked, u0.contract, u0.out):
                raise ValueError(
                    f"leaf {names[i]!r} is used with different layouts in different slices"
                )
        shape = tuple(np.shape(leaves[i]))
        n_sl = int(np.prod([shape[a] for a in u0.stacked], dtype=np.int64))
        d = int(np.prod([shape[a] for a in u0.contract], dtype=np.int64))
        h = np.zeros((n_sl, d, d))
        asum, amax = np.zeros((n_sl, d)), np.zeros((n_sl, d))
        rows = np.zeros(n_sl, np.int64)
        for u, (hh, s, m, r) in uses:
            h[u.slice_index], asum[u.slice_index] = hh, s
            amax[u.slice_index], rows[u.slice_index] = m, r
        out[names[i]] = LeafStats(
            names[i], shape, u0.kind, u0.stacked, u0.contract, u0.out, h, asum, amax, rows
        )
    if not out:
        raise ValueError(
            "no selected weight fed a matmul or convolution during calibration"
            + (f" (skipped: {'; '.join(skipped[:3])})" if skipped else "")
        )
    order = tuple((names[u.leaf], u.slice_index) for u in meta.values() if names[u.leaf] in out)
    return Stats(out, tuple(skipped), n_batches, order)
