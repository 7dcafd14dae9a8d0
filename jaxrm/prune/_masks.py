"""``masks``, ``apply`` and ``threshold``: the public face of mask making.

Each stacked slice of a leaf (see [jaxrm.tree.Layout][]) is a layer of its
own: with ``scope="layer"`` every slice keeps ``round((1 - s) * n)`` of its
``n`` units; patterns act inside each slice. The selection itself lives in
``_select.py``, the leaf bookkeeping and argument checks in ``_leaves.py``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import _checks
from jaxrm import tree as jtree
from jaxrm.prune import _leaves, _patterns, _select
from jaxrm.prune._leaves import Plan

__all__ = ["apply", "compute", "masks", "threshold"]


def _counts(p: Plan, sparsities: Any, scope: str) -> Any:
    """Kept units: one ``(n_slices,)`` array per leaf (``"layer"``; one ``RowCounts`` for
    traced sparsities) or one count (``"global"``)."""
    units = [_patterns.unit_count(pat, lay.slice_shape) for lay, pat in zip(p.layouts, p.patterns)]
    if scope == "global":
        total = sum(u * lay.n_slices for u, lay in zip(units, p.layouts))
        return _leaves.kept_counts([sparsities[0]], [total])[0]
    if not isinstance(sparsities, list) or any(_leaves.is_traced(s) for s in sparsities):
        return _leaves.row_counts(sparsities, units, [lay.n_slices for lay in p.layouts])
    out = []
    for k, lay in zip(_leaves.kept_counts(sparsities, units), p.layouts):
        if isinstance(k, int):
            out.append(np.full((lay.n_slices,), k, np.int32))
        else:
            out.append(jnp.full((lay.n_slices,), k, jnp.int32))
    return out


def _unit_rows(x, lay: jtree.Layout, pat, scope: str):
    if pat is None and scope == "global":
        return x.reshape(1, -1)  # global ranking needs no slicing: keep the leaf's flat order
    return _patterns.unit_scores(pat, lay.to_slices(x))


def _mask_of(flags, x, lay: jtree.Layout, pat, scope: str):
    if pat is None and scope == "global":
        return flags.reshape(lay.shape)
    return lay.from_slices(_patterns.expand(pat, flags, (lay.n_slices, *lay.slice_shape)))


@functools.partial(jax.jit, static_argnames=("layouts", "patterns", "scope", "host", "common"))
def _compute_jit(leaves, ks, layouts, patterns, scope, host, common=0.0):
    return _compute(leaves, ks, layouts, patterns, scope, host, common)


def _compute(leaves, ks, layouts, patterns, scope, host, common=0.0):
    nm = [isinstance(pat, _patterns.NM) for pat in patterns]
    out: list = [None] * len(leaves)
    ranked = [i for i in range(len(leaves)) if not nm[i]]
    for i in range(len(leaves)):
        if nm[i]:
            lay, pat = layouts[i], patterns[i]
            n = _patterns.unit_count(None, lay.slice_shape)
            mask = _patterns.nm_mask(pat, lay.to_slices(leaves[i]))
            xp = np if isinstance(mask, np.ndarray) else jnp
            prunes = (xp.asarray(ks[i]) < n).reshape((-1,) + (1,) * len(lay.slice_shape))
            out[i] = lay.from_slices(xp.where(prunes, mask, True))
    if ranked:
        rows = [_unit_rows(leaves[i], layouts[i], patterns[i], scope) for i in ranked]
        if scope == "global":
            flags = _select.select([r.reshape(-1) for r in rows], ks, "global", host=host,
                                   common=common)
        else:
            ranked_ks = (ks.subset(ranked) if isinstance(ks, _leaves.RowCounts)
                         else [ks[i] for i in ranked])
            flags = _select.select(rows, ranked_ks, "layer", host=host, common=common)
        for i, f, r in zip(ranked, flags, rows):
            out[i] = _mask_of(f.reshape(r.shape), leaves[i], layouts[i], patterns[i], scope)
    return out


def compute(
    p: Plan, sparsities: Any, scope: str, *, host: bool = True, leaves: list | None = None,
    common: float = 0.0,
) -> list:
    """The picked leaves' masks (sparsities already checked: a list, or a traced vector).

    N:M leaves are ranked within their groups, so ``scope="global"`` ranks
    only the other leaves together. ``leaves`` replaces the plan's score
    leaves (same shapes). ``common`` is a score expected to be frequent
    (see ``_select.select``).
    """
    leaves = p.leaves if leaves is None else list(leaves)
    if scope == "global" and any(isinstance(pat, _patterns.NM) for pat in p.patterns):
        scope = "layer"  # N:M picks within groups: there is nothing global to rank
        sparsities = [sparsities[0]] * len(p.picked)
    ks = _counts(p, sparsities, scope)
    ks_list = [ks] if scope == "global" else ks
    eager = (host and all(pat is None or isinstance(pat, _patterns.NM) for pat in p.patterns)
             and _select._concrete_on_cpu(leaves))
    if eager and not isinstance(ks, _leaves.RowCounts) and not any(
        _leaves.is_traced(k) for k in ks_list
    ):
        # Eager on CPU: the numpy selection on views, no compilation.
        out = _compute([np.asarray(x) for x in leaves], ks, p.layouts, p.patterns, scope, True)
        return [jax.device_put(m) for m in out]  # jnp.asarray would compile once per shape
    if scope == "global":
        ks_arg = jnp.asarray(ks, jnp.int32)
    elif isinstance(ks, _leaves.RowCounts):
        ks_arg = ks
    else:
        ks_arg = [jnp.asarray(k) for k in ks]
    return _compute_jit(tuple(leaves), ks_arg, p.layouts, p.patterns, scope, host, common)


def _check_nonnegative(p: Plan) -> None:
    """Signed scores rank large negative weights lowest; they must be magnitudes first.

    Channels and blocks rank squared norms, which signed scores give correctly.
    """
    for path, x, pat in zip(p.paths, p.leaves, p.patterns):
        if isinstance(pat, _patterns.Channels | _patterns.Blocks):
            continue
        if _leaves.is_traced(x):
            continue  # under jit the values are unknown; the documented contract applies
        if isinstance(x, np.ndarray) or _select._concrete_on_cpu([x]):
            a = np.asarray(x)
            low = a.min() if a.size else 0
            if np.isnan(low):
                low = np.nanmin(a) if not np.isnan(a).all() else 0
        else:
            low = float(jnp.nanmin(x)) if x.size else 0
        if low < 0:
            raise ValueError(
                f"scores at leaf {path!r} hold negative values (min {float(low):.4g}): masks "
                "keeps the highest scores, so raw signed weights would keep only the "
                "positive ones; pass jaxrm.prune.magnitude(params) (or another score >= 0)"
            )


def masks(
    scores: Any,
    sparsity: Any,
    *,
    scope: str = "layer",
    where: jtree.Where = None,
    pattern: Any = None,
    stacked: Any = None,
) -> Any:
    """Keeps the highest scores: exactly ``round((1 - s) * n)`` entries per layer.

    With ``scope="layer"`` each selected layer keeps ``round((1 - s) * n)`` of
    its ``n`` entries, where a layer is a leaf, or each slice of a stacked
    leaf (scanned layers, fused tensors: see [jaxrm.tree.layouts][]). With
    ``scope="global"`` the selected leaves together keep ``round((1 - s) * N)``
    of their ``N`` entries, so layers with larger scores keep more. Among
    equal scores the lower flat index wins (for ``"global"``, leaves count in
    flattening order). NaN scores rank lowest.

    The threshold is found by an exact selection (no sort; see ``_select.py``),
    so it is fast on large models and works under ``jax.jit`` and
    ``jax.vmap``, with a traced ``sparsity`` too.

    With a ``pattern``, the units ranked are channels or blocks (and ``n``
    counts them, per slice); [jaxrm.prune.nm][] keeps ``n`` of every ``m``
    entries, so its sparsity is ``1 - n/m`` wherever the requested sparsity
    prunes anything (a leaf whose ``sparsity`` keeps all entries stays dense).
    Pattern axes left ``None`` follow each leaf's layout.

    Args:
      scores: a pytree of scores ``>= 0``, e.g. [jaxrm.prune.magnitude][] of
        the params.
      sparsity: the fraction pruned in ``[0, 1)``, as a per-leaf setting: a
        float (it may be traced), a pytree of the scores' structure (e.g. from
        [jaxrm.prune.erk][]), a callable ``(path, leaf)`` or ``(regex, value)``
        rules (see [jaxrm.tree.resolve][]).
      scope: ``"layer"`` (per leaf or slice) or ``"global"``.
      where: the leaves to prune (``None``: [jaxrm.tree.weights][], a regular
        expression on the leaf path, or a callable ``(path, leaf)``).
      pattern: ``None`` (unstructured), [jaxrm.prune.nm][],
        [jaxrm.prune.channels][] or [jaxrm.prune.blocks][], or a per-leaf
        setting of them.
      stacked: per-leaf stacked axes (``None``: inferred, ``()``: none); see
        [jaxrm.tree.layouts][].

    Returns:
      A pytree of the scores' structure: a ``bool`` array (``True`` = kept) at
      each selected leaf, ``None`` elsewhere.

    Raises:
      ValueError: a sparsity outside ``[0, 1)``, negative scores (pass
        ``prune.magnitude(params)``), ``where`` selects nothing, an unknown
        ``scope``, a per-leaf ``sparsity`` with ``scope="global"``, a setting
        that does not match, a bad layout, or a pattern that does not fit a
        leaf (each naming the argument and leaf path).
      TypeError: a selected leaf is not a floating array, ``sparsity`` or
        ``pattern`` has the wrong type.
    """
    scope = _leaves.check_scope(scope)
    if scope == "global" and not _leaves.is_scalar(sparsity):
        raise ValueError(
            "sparsity must be a single float with scope='global'; a per-leaf sparsity "
            "needs scope='layer'"
        )
    p = _leaves.plan(scores, where, pattern=pattern, stacked=stacked)
    values = _leaves.sparsities(p, sparsity)
    _check_nonnegative(p)
    return p.tree(compute(p, values, scope))


def apply(params: Any, masks: Any) -> Any:
    """Zeroes the pruned entries: ``where(mask, w, 0)`` at masked leaves.

    Args:
      params: any parameter pytree.
      masks: a mask pytree of the params' structure (``bool`` arrays,
        ``None`` for leaves left dense).

    Returns:
      A new pytree of the params' structure; unmasked leaves are passed
      through unchanged and the inputs are not modified.

    Raises:
      ValueError: ``masks`` does not match ``params`` (names the leaf path).
      TypeError: a mask leaf is not a ``bool`` array.
    """
    fl = jtree.flatten(params)
    m_leaves = jtree.aligned(params, masks, "masks")
    out = []
    for path, x, m in zip(fl.paths, fl.leaves, m_leaves):
        if m is None:
            out.append(x)
            continue
        if not jtree.is_array(m) or m.dtype != jnp.bool_:
            raise TypeError(
                f"masks at leaf {path!r} must be a bool array or None, got "
                f"{getattr(m, 'dtype', type(m).__name__)}"
            )
        out.append(jnp.where(m, x, jnp.zeros((), x.dtype)))
    return fl.unflatten(out)


def _threshold_one(x, lay: jtree.Layout, quality: float):
    """``|w| > quality * std(w)`` per slice; the std is over the finite entries."""
    xs = lay.to_slices(x).astype(jnp.float32)
    axes = tuple(range(1, xs.ndim))
    finite = jnp.isfinite(xs)
    n = jnp.maximum(jnp.sum(finite, axis=axes, keepdims=True), 1)
    mean = jnp.sum(jnp.where(finite, xs, 0), axis=axes, keepdims=True) / n
    var = jnp.sum(jnp.where(finite, jnp.square(xs - mean), 0), axis=axes, keepdims=True) / n
    keep = jnp.abs(xs) > quality * jnp.sqrt(var)  # NaN entries compare False: pruned
    return lay.from_slices(keep)


def threshold(
    params: Any, quality: float, *, where: jtree.Where = None, stacked: Any = None
) -> Any:
    """Han et al. (2015) threshold pruning: keep ``|w| > quality * std(w)`` per layer.

    Each slice of a stacked leaf has its own standard deviation. The standard
    deviation is taken over the finite entries, so one NaN or Inf does not
    prune a whole layer; NaN entries are pruned, infinite ones kept.

    Args:
      params: any parameter pytree.
      quality: the quality parameter, a finite float ``>= 0`` (the threshold
        in standard deviations of each layer).
      where: the leaves to prune (default [jaxrm.tree.weights][]).
      stacked: per-leaf stacked axes (see [jaxrm.tree.layouts][]).

    Returns:
      A mask pytree: ``bool`` arrays at selected leaves, ``None`` elsewhere.

    Raises:
      TypeError: ``quality`` is not a number, or a selected leaf is not floating.
      ValueError: ``quality`` is negative or not finite, or ``where`` selects
        nothing.
    """
    quality = _checks.real(quality, "quality", minimum=0)
    p = _leaves.plan(params, where, stacked=stacked)
    return p.tree([_threshold_one(x, lay, quality) for x, lay in zip(p.leaves, p.layouts)])
