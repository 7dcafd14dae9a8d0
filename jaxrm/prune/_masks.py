"""Masks from scores: exact top-k selection without a sort, per leaf or global.

Two selections give the same masks:

* On the device (any backend, and inside [`jaxrm.prune.sparsify`][jaxrm.prune.sparsify]): a
  radix selection on the bits of the float32 scores. The bits are mapped to
  ``uint32`` keys that order like the floats; a histogram of the high 16 bits
  finds the bucket that holds the k-th key, and a histogram of the low 16 bits
  inside that bucket finds the key itself: two counting passes instead of an
  ``O(n log n)`` sort.
* On a CPU host (eager calls, and ``jax.pure_callback`` under ``jit``): a
  strided sample brackets the k-th score, one pass counts the scores above the
  bracket and gathers the few inside it, and ``np.partition`` of those gives
  the threshold. numpy's vectorized comparisons beat XLA's CPU scatters and
  reductions several times over here.

Both are exact: every score above the threshold is kept, and among scores
equal to it the ones with the lowest flat index (in leaf flattening order for
``scope="global"``) are kept until exactly ``k`` are.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import tree as jtree
from jaxrm.prune import _patterns
from jaxrm.tree import aligned

__all__ = ["apply", "masks", "threshold"]

_HALF = 16
_BINS = 1 << _HALF
_LOW = _BINS - 1
_SAMPLE = 1 << 16  # scores sampled to bracket the threshold on the host


# --------------------------------------------------------------------------
# Radix selection


def _keys(u: jax.Array) -> jax.Array:
    """Maps float32 scores to uint32 keys with the same order (NaN lowest, -0 == +0)."""
    u = jnp.where(jnp.isnan(u), -jnp.inf, u)
    u = jnp.where(u == 0, jnp.zeros((), u.dtype), u)
    bits = jax.lax.bitcast_convert_type(u, jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _suffix_sums(h: jax.Array) -> jax.Array:
    return jnp.cumsum(h[::-1])[::-1]


def _bucket_of_kth(hist: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The bucket holding the k-th highest key, and the count of keys in higher buckets.

    Two levels of 256 (a scan over 65536 buckets costs more on CPU than the
    whole histogram): first the row of 256 buckets, then the bucket in it.
    """
    side = 1 << (_HALF // 2)
    rows = hist.reshape(side, side)
    row_total = jnp.sum(rows, axis=1)
    row_at_least = _suffix_sums(row_total)  # keys in rows >= r
    r = jnp.maximum(jnp.sum(row_at_least >= k, dtype=jnp.int32) - 1, 0)
    above_row = row_at_least[r] - row_total[r]
    row = jax.lax.dynamic_index_in_dim(rows, r, axis=0, keepdims=False)
    at_least = _suffix_sums(row) + above_row  # keys in buckets >= (r, c)
    c = jnp.maximum(jnp.sum(at_least >= k, dtype=jnp.int32) - 1, 0)
    return r * side + c, at_least[c] - row[c]


def _select(keys: list[jax.Array], k: jax.Array) -> list[jax.Array]:
    """Flags of the ``k`` highest keys over all flat ``keys`` arrays (exact, ties by index)."""
    k = jnp.asarray(k, jnp.int32)
    hist = jnp.zeros(_BINS, jnp.int32)
    for kk in keys:
        hist = hist.at[(kk >> _HALF).astype(jnp.int32)].add(1)
    b, above = _bucket_of_kth(hist, k)
    need = k - above

    low = jnp.zeros(_BINS, jnp.int32)
    for kk in keys:
        in_bucket = (kk >> _HALF).astype(jnp.int32) == b
        idx = jnp.where(in_bucket, (kk & _LOW).astype(jnp.int32), _BINS)
        low = low.at[idx].add(1, mode="drop")
    b2, above_low = _bucket_of_kth(low, need)
    t = (b.astype(jnp.uint32) << _HALF) | b2.astype(jnp.uint32)
    greater = above + above_low
    wanted_ties = k - greater
    ties = low[b2]

    def all_ties():
        return [kk >= t for kk in keys]

    def first_ties():
        out, offset = [], jnp.int32(0)
        for kk in keys:
            eq = kk == t
            rank = jnp.cumsum(eq, dtype=jnp.int32) + offset  # 1-based among ties
            out.append((kk > t) | (eq & (rank <= wanted_ties)))
            offset = offset + jnp.sum(eq, dtype=jnp.int32)
        return out

    return jax.lax.cond(wanted_ties == ties, all_ties, first_ties)


def _select_host_one(arrays: list[np.ndarray], k: int) -> list[np.ndarray]:
    """The numpy twin of `_select` on float32 arrays: same result, fewer passes.

    A strided sample brackets the k-th highest score between two sample values;
    one pass counts the scores above the bracket and gathers those inside it
    (usually a few thousandths of them), and ``np.partition`` of that small set
    gives the exact threshold. Comparisons on floats treat ``-0 == +0`` like
    the keys do; NaNs never compare, so they are handled apart and rank lowest.
    """
    sizes = [a.size for a in arrays]
    n = sum(sizes)
    if k <= 0:
        return [np.zeros(s, bool) for s in sizes]
    if k >= n:
        return [np.ones(s, bool) for s in sizes]
    step = max(1, n // _SAMPLE)
    sample = np.concatenate([a[::step] for a in arrays])
    sample = np.sort(sample[~np.isnan(sample)])
    s = sample.size
    inf = np.float32(np.inf)
    lo, hi = -inf, inf
    if s:
        p = k / n
        rank = p * s  # expected rank of the k-th highest score in the sample, from the top
        margin = 6.0 * math.sqrt(s * p * (1.0 - p)) + 16.0
        top_hi, top_lo = int(rank - margin), math.ceil(rank + margin)
        if 0 <= top_hi < s:
            hi = sample[s - 1 - top_hi]
        if 0 <= top_lo < s:
            lo = sample[s - 1 - top_lo]
    for _ in range(2):
        above, positions, values = 0, [], []
        for a in arrays:
            above += int(np.count_nonzero(a > hi))
            idx = np.flatnonzero((a >= lo) & (a <= hi))
            positions.append(idx)
            values.append(a[idx])
        c = np.concatenate(values)
        if above < k <= above + c.size:
            break
        lo, hi = -inf, inf  # the sample misled us: bracket everything
    else:
        # k exceeds the non-NaN scores: keep all of them and the first NaNs.
        out, left = [], k - (above + c.size)
        for a in arrays:
            nan = np.isnan(a)
            m = ~nan
            nan_idx = np.flatnonzero(nan)[:left]
            m[nan_idx] = True
            left -= nan_idx.size
            out.append(m)
        return out
    need = k - above
    t = np.partition(c, c.size - need)[c.size - need]
    wanted = k - above - int(np.count_nonzero(c > t))
    if wanted == int(np.count_nonzero(c == t)):
        return [a >= t for a in arrays]
    out, left = [], wanted
    for a, idx, v in zip(arrays, positions, values):
        m = a > t
        tie_idx = idx[v == t][: max(left, 0)]
        m[tie_idx] = True
        left -= tie_idx.size
        out.append(m)
    return out


def _select_host(arrays, ks, scope: str) -> list[np.ndarray]:
    arrays = [np.asarray(a, np.float32).reshape(-1) for a in arrays]
    ks = np.asarray(ks).reshape(-1)
    if scope == "global":
        return _select_host_one(arrays, int(ks[0]))
    return [_select_host_one([a], int(k))[0] for a, k in zip(arrays, ks)]


def _select_device(units: list[jax.Array], ks: jax.Array, scope: str) -> list[jax.Array]:
    keys = [_keys(u) for u in units]
    if scope == "global":
        return _select(keys, ks)
    return [_select([kk], ks[i])[0] for i, kk in enumerate(keys)]


def _select_units(units: list[jax.Array], ks: jax.Array, scope: str) -> list[jax.Array]:
    """Keep-flags of the highest units: numpy on the host for CPU, radix selection elsewhere.

    XLA's CPU reductions and scatters are much slower than numpy's vectorized
    comparisons, so with a CPU backend the selection runs as a host callback;
    on GPU and TPU the radix selection stays on the device. Both give the
    same masks. (The choice is made when tracing, so a CPU program does not
    also compile the device path.)
    """
    if jax.default_backend() != "cpu":
        return _select_device(units, ks, scope)
    shapes = [jax.ShapeDtypeStruct(u.shape, jnp.bool_) for u in units]
    return jax.pure_callback(
        functools.partial(_select_host, scope=scope),
        shapes,
        units,
        ks,
        vmap_method="sequential",
    )


@functools.partial(jax.jit, static_argnames=("pattern", "scope", "host"))
def _compute(leaves: tuple, ks: jax.Array, pattern, scope: str, host: bool = True) -> list:
    """Masks of ``leaves`` (score arrays) keeping ``ks`` units (per leaf, or one global k)."""
    if isinstance(pattern, _patterns.NM):
        out = []
        for i, x in enumerate(leaves):
            prunes = ks[i] < _patterns.unit_count(None, x.shape)
            out.append(jnp.where(prunes, _patterns.nm_mask(pattern, x), True))
        return out
    units = [_patterns.unit_scores(pattern, x).reshape(-1) for x in leaves]
    keep = _select_units(units, ks, scope) if host else _select_device(units, ks, scope)
    return [_patterns.expand(pattern, f, x.shape) for f, x in zip(keep, leaves)]


# --------------------------------------------------------------------------
# Argument checks


def _is_scalar(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, numbers.Real):
        return True
    return jtree.is_array(value) and tuple(np.shape(value)) == ()


def _is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def check_sparsity(value: Any, argument: str = "sparsity", path: str | None = None) -> Any:
    """Returns ``value`` as a float (or a traced scalar), raising if it is not in [0, 1)."""
    where = f" at leaf {path!r}" if path is not None else ""
    if isinstance(value, bool | np.bool_) or not _is_scalar(value):
        raise TypeError(
            f"{argument}{where} must be a float in [0, 1), got {type(value).__name__}"
        )
    if jtree.is_array(value) and not jnp.issubdtype(value.dtype, jnp.number):
        raise TypeError(f"{argument}{where} must be a number, got dtype {value.dtype}")
    if _is_traced(value):
        return value
    s = float(value)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"{argument}{where} must be in [0, 1), got {s}")
    return s


def kept_count(sparsity: Any, n: int) -> Any:
    """``round((1 - sparsity) * n)``: a Python int, or an int32 scalar when traced."""
    if isinstance(sparsity, float):
        return round((1.0 - sparsity) * n)
    k = jnp.round((1.0 - jnp.asarray(sparsity, jnp.float32)) * n)
    return jnp.clip(k, 0, n).astype(jnp.int32)


def _selected_leaves(scores: Any, where, pattern) -> tuple[list, list[int]]:
    """Returns the scores' ``(path, leaf)`` list and the indices ``where`` picks (checked)."""
    jtree.selected(scores, where)  # raises, naming `where`, if nothing is chosen
    flat = jtree.leaves_with_paths(scores)
    chosen = jax.tree_util.tree_leaves(jtree.select(scores, where))
    picked = [i for i, c in enumerate(chosen) if c]
    for i in picked:
        path, leaf = flat[i]
        if not jtree.is_array(leaf):
            raise TypeError(f"where selects leaf {path!r}, which is not an array")
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(
                f"where selects leaf {path!r} of dtype {leaf.dtype}; only floating "
                "leaves can be pruned"
            )
        _patterns.check(pattern, path, tuple(leaf.shape))
    return flat, picked


def _check_pattern_type(pattern) -> None:
    if pattern is not None and not isinstance(pattern, _patterns.NM | _patterns.Channels
                                              | _patterns.Blocks):
        raise TypeError(
            "pattern must be None or one of jaxrm.prune.nm(...), channels(...), "
            f"blocks(...), got {type(pattern).__name__}"
        )


def _check_scope(scope) -> None:
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")


def _per_leaf_sparsity(scores, sparsity, flat, picked) -> list:
    """One checked sparsity per picked leaf, from a scalar or a per-leaf pytree."""
    if _is_scalar(sparsity) or isinstance(sparsity, bool | np.bool_):
        s = check_sparsity(sparsity)
        return [s] * len(picked)
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(sparsity)):
        raise TypeError(
            "sparsity must be a float in [0, 1) or a pytree of per-leaf floats, got "
            f"{type(sparsity).__name__}"
        )
    values = aligned(scores, sparsity, "sparsity", shapes=False)
    out = []
    for i in picked:
        path = flat[i][0]
        if values[i] is None:
            raise ValueError(f"sparsity has None at leaf {path!r}, which where selects")
        out.append(check_sparsity(values[i], "sparsity", path))
    return out


def build(scores: Any, flat: list, picked: list[int], computed: list) -> Any:
    """The mask tree: the computed masks at ``picked`` leaves, ``None`` elsewhere."""
    leaves = [None] * len(flat)
    for i, m in zip(picked, computed):
        leaves[i] = m
    treedef = jax.tree_util.tree_structure(scores)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _on_cpu_and_concrete(arrays, ks) -> bool:
    if _is_traced(ks) or any(_is_traced(x) for x in arrays):
        return False
    for x in arrays:
        if isinstance(x, jax.Array) and any(d.platform != "cpu" for d in x.devices()):
            return False
        if not isinstance(x, jax.Array | np.ndarray):
            return False
    return True


def compute_masks(scores, flat, picked, sparsities, scope, pattern, *, host=True) -> list:
    """The selected leaves' masks, with sparsities already checked."""
    arrays = tuple(flat[i][1] for i in picked)
    if isinstance(pattern, _patterns.NM):
        scope = "layer"  # N:M picks within groups: there is nothing global to rank
    counts = [_patterns.unit_count(pattern, tuple(x.shape)) for x in arrays]
    if scope == "global":
        ks = [kept_count(sparsities[0], sum(counts))]
    else:
        ks = [kept_count(s, n) for s, n in zip(sparsities, counts)]
    if all(isinstance(k, int) for k in ks):
        ks = np.asarray(ks, np.int32)
    else:
        ks = jnp.stack([jnp.asarray(k, jnp.int32) for k in ks])
    if scope == "global":
        ks = ks[0]
    if host and pattern is None and _on_cpu_and_concrete(arrays, ks):
        # Eager on CPU: run the numpy selection directly, with no compilation.
        keep = _select_host(arrays, ks, scope)
        return [jnp.asarray(f.reshape(x.shape)) for f, x in zip(keep, arrays)]
    return _compute(arrays, jnp.asarray(ks), pattern, scope, host)


# --------------------------------------------------------------------------
# Public functions


def masks(
    scores: Any,
    sparsity: Any,
    *,
    scope: str = "layer",
    where: jtree.Where = None,
    pattern: _patterns.Pattern | None = None,
) -> Any:
    """Keeps the highest scores: exactly ``round((1 - s) * n)`` entries.

    With ``scope="layer"`` each selected leaf keeps ``round((1 - s) * n)`` of
    its ``n`` entries; with ``scope="global"`` the selected leaves together
    keep ``round((1 - s) * N)`` of their ``N`` entries, so layers with larger
    scores keep more. The kept entries are those with the highest scores;
    among equal scores the lower flat index wins (for ``"global"``, leaves
    count in flattening order). NaN scores rank lowest.

    The threshold is found by an exact selection (no sort; see the module
    notes), so it is fast on large models and works under ``jax.jit`` and
    ``jax.vmap``, with a traced ``sparsity`` too.

    With a ``pattern``, the units ranked are channels or blocks (and ``n`` counts
    them); [`nm`][jaxrm.prune.nm] keeps ``n`` of every ``m`` entries, so its sparsity is
    ``1 - n/m`` wherever the requested sparsity prunes anything (a leaf whose
    ``sparsity`` keeps all entries stays dense).

    Args:
      scores: a pytree of float scores, e.g. [`magnitude`][jaxrm.prune.magnitude] of the params.
      sparsity: the fraction pruned, a float in ``[0, 1)``, or a pytree of the
        scores' structure holding one float per selected leaf (``None``
        elsewhere), e.g. from [`uniform`][jaxrm.prune.uniform] or [`erk`][jaxrm.prune.erk]; scalar
        sparsities may be traced.
      scope: ``"layer"`` (per leaf) or ``"global"`` (over all selected leaves).
      where: the leaves to prune (``None``: [`jaxrm.tree.weights`][jaxrm.tree.weights], a
        regular expression on the leaf path, or a callable ``(path, leaf)``).
      pattern: ``None`` (unstructured), [`nm`][jaxrm.prune.nm], [`channels`][jaxrm.prune.channels]
        or
        [`blocks`][jaxrm.prune.blocks].

    Returns:
      A pytree of the scores' structure: a ``bool`` array (``True`` = kept) at
      each selected leaf, ``None`` elsewhere.

    Raises:
      ValueError: a sparsity outside ``[0, 1)``, ``where`` selects nothing, an
        unknown ``scope``, a per-leaf ``sparsity`` with ``scope="global"``, a
        ``sparsity`` tree that does not match, or a pattern that does not fit a
        leaf (each naming the argument and leaf path).
      TypeError: a selected leaf is not a floating array, ``sparsity`` or
        ``pattern`` has the wrong type.
    """
    _check_scope(scope)
    _check_pattern_type(pattern)
    flat, picked = _selected_leaves(scores, where, pattern)
    if scope == "global" and not (_is_scalar(sparsity) or isinstance(sparsity, bool)):
        raise ValueError(
            "sparsity must be a single float with scope='global'; a per-leaf sparsity "
            "tree needs scope='layer'"
        )
    sparsities = _per_leaf_sparsity(scores, sparsity, flat, picked)
    computed = compute_masks(scores, flat, picked, sparsities, scope, pattern)
    return build(scores, flat, picked, computed)


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
    m_leaves = aligned(params, masks, "masks")
    p_flat = jtree.leaves_with_paths(params)
    out = []
    for (path, x), m in zip(p_flat, m_leaves):
        if m is None:
            out.append(x)
            continue
        if not jtree.is_array(m) or m.dtype != jnp.bool_:
            raise TypeError(
                f"masks at leaf {path!r} must be a bool array or None, got "
                f"{getattr(m, 'dtype', type(m).__name__)}"
            )
        out.append(jnp.where(m, x, jnp.zeros((), x.dtype)))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), out)


def threshold(params: Any, quality: float, *, where: jtree.Where = None) -> Any:
    """Han et al. (2015) threshold pruning: keep ``|w| > quality * std(w)`` per leaf.

    Args:
      params: any parameter pytree.
      quality: the quality parameter, a finite float ``>= 0`` (the threshold
        in standard deviations of each leaf).
      where: the leaves to prune (default [`jaxrm.tree.weights`][jaxrm.tree.weights]).

    Returns:
      A mask pytree: ``bool`` arrays at selected leaves, ``None`` elsewhere.

    Raises:
      TypeError: ``quality`` is not a number, or a selected leaf is not floating.
      ValueError: ``quality`` is negative or not finite, or ``where`` selects
        nothing.
    """
    if isinstance(quality, bool) or not isinstance(quality, numbers.Real):
        raise TypeError(f"quality must be a float, got {type(quality).__name__}")
    if not math.isfinite(quality) or quality < 0:
        raise ValueError(f"quality must be a finite float >= 0, got {quality}")
    flat, picked = _selected_leaves(params, where, None)
    computed = [
        jnp.abs(x) > quality * jnp.std(x.astype(jnp.float32)).astype(x.dtype)
        for x in (flat[i][1] for i in picked)
    ]
    return build(params, flat, picked, computed)
