"""Exact top-k selection without a sort: keep-flags of the highest scores, per row or global.

Two selections give the same masks:

* On the device (any backend, and inside [jaxrm.prune.sparsify][]): a
  radix selection on the bits of the float32 scores (``_radix.py``): two
  counting passes instead of an ``O(n log n)`` sort.
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

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm.prune import _leaves, _radix

__all__ = ["select"]

_SAMPLE = 1 << 16  # scores sampled to bracket the threshold on the host
_MARKERS = 1 << 22  # leaf-offset marker entries (bools) before static slices take over


def _select_host_one(arrays: list[np.ndarray], k: int) -> list[np.ndarray]:
    """The numpy twin of ``_select`` on float32 arrays: same result, fewer passes.

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


def _host_array(x) -> np.ndarray:
    """float64 stays float64 (ranked exactly); everything else is ranked as float32."""
    x = np.asarray(x)
    return x if x.dtype == np.float64 else x.astype(np.float32, copy=False)


def _host_rows(rows, ks) -> list[np.ndarray]:
    out = []
    for r, k in zip(rows, ks):
        r = _host_array(r)
        k = np.asarray(k).reshape(-1)
        out.append(np.stack([_select_host_one([row], int(kk))[0] for row, kk in zip(r, k)]))
    return out


def _host_global(units, k) -> list[np.ndarray]:
    arrays = [_host_array(u).reshape(-1) for u in units]
    flags = _select_host_one(arrays, int(np.asarray(k).reshape(-1)[0]))
    return [f.reshape(np.shape(u)) for f, u in zip(flags, units)]


def _device_rows(rows, ks, common: float = 0.0) -> list[jax.Array]:
    """Per-row selection, one program per row length (so compile time does not grow
    with the number of leaves of one shape).

    On CPU the rows of one length run through a loop, one row at a time: a
    batched (``vmap``) scatter and a ``cond`` turned into a select (both tie
    branches computed) were measured three to four times slower there. Other
    backends batch the rows with ``vmap`` (the rows run in parallel).
    """
    by_n: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_n.setdefault(r.shape[1], []).append(i)
    out: list = [None] * len(rows)

    for n, idx in by_n.items():
        scores = jnp.concatenate([rows[i].astype(jnp.float32) for i in idx])
        if isinstance(ks, _leaves.RowCounts):
            k = ks.rows(idx)
        else:
            k = jnp.concatenate([jnp.asarray(ks[i], jnp.int32).reshape(-1) for i in idx])

        def one(row, kk, scores=scores):
            return _radix.threshold([(scores, row, 0)], kk, common)

        if jax.default_backend() == "cpu":
            def body(row, acc, one=one, k=k):
                return tuple(a.at[row].set(v) for a, v in zip(acc, one(row, k[row])))

            m = scores.shape[0]
            init = (jnp.zeros(m, jnp.uint32), jnp.zeros(m, jnp.uint32), jnp.zeros(m, bool))
            t, t_index, keep = jax.lax.fori_loop(0, m, body, init)
        else:
            t, t_index, keep = jax.vmap(one)(jnp.arange(scores.shape[0]), k)
        # The loop gives the per-row scalars only (a cond in it picks a scalar, not
        # an array); the flags of all rows are then one elementwise pass.
        flags = _radix.flags(_radix.keys(scores), jnp.arange(n, dtype=jnp.uint32), t[:, None],
                             t_index[:, None], keep[:, None])
        for i, part in zip(idx, _cut(flags, [rows[i].shape[0] for i in idx])):
            out[i] = part
    return out


def _cut(values: jax.Array, sizes: list[int]) -> list[jax.Array]:
    """``values`` (``sum(sizes)`` rows) cut into pieces of ``sizes`` rows.

    XLA compiles one kernel per distinct computation and reuses it for identical
    ones. A static slice bakes its offset into the code, so every leaf got its own
    kernel and compilation grew with the number of leaves of one shape. Here the
    offset is data, a constant marker row picking it out of an ``arange``, so
    same-shape leaves share one kernel. Past a few million marker entries static
    slices are cheaper.
    """
    total = sum(sizes)
    offsets = np.cumsum([0, *sizes[:-1]])
    if total * len(sizes) > _MARKERS:
        return [values[o : o + s] for o, s in zip(offsets, sizes)]
    # The barrier keeps XLA from folding marker and arange back into constant offsets.
    iota = jax.lax.optimization_barrier(jnp.arange(total, dtype=jnp.int32))
    out = []
    for o, s in zip(offsets, sizes):
        marker = np.zeros(total, bool)
        marker[o] = True
        start = jnp.sum(jnp.where(marker, iota, 0))
        out.append(jax.lax.dynamic_slice_in_dim(values, start, s))
    return out


def _device_global(units, k, common: float = 0.0) -> list[jax.Array]:
    flat = [u.astype(jnp.float32).reshape(1, -1) for u in units]
    offsets = np.cumsum([0] + [u.size for u in flat[:-1]]).tolist()
    t, t_index, keep = _radix.threshold(list(zip(flat, [0] * len(flat), offsets)),
                                        jnp.asarray(k, jnp.int32).reshape(()), common)
    out = []
    for u, f, o in zip(units, flat, offsets):
        index = jnp.arange(f.size, dtype=jnp.uint32) + jnp.uint32(o)
        out.append(_radix.flags(_radix.keys(f[0]), index, t, t_index, keep).reshape(u.shape))
    return out


def _concrete_on_cpu(arrays) -> bool:
    for x in arrays:
        if isinstance(x, jax.core.Tracer):
            return False
        if isinstance(x, jax.Array) and any(d.platform != "cpu" for d in x.devices()):
            return False
        if not isinstance(x, jax.Array | np.ndarray):
            return False
    return True


def select(units: list, ks, scope: str, *, host: bool = True, common: float = 0.0) -> list:
    """Keep-flags of the highest units.

    Args:
      units: score arrays; with ``scope="layer"`` each is ``(rows, n)`` and each
        row keeps its own count, with ``"global"`` they rank together.
      ks: with ``"layer"``, one ``(rows,)`` int array of counts per entry of
        ``units``, or all of them as one ``_leaves.RowCounts``; with
        ``"global"``, one count.
      scope: ``"layer"`` or ``"global"``.
      host: allow the numpy selection (eager, or a host callback under ``jit``
        on CPU). XLA's CPU reductions and scatters are much slower than
        numpy's vectorized comparisons; on GPU and TPU the radix selection
        stays on the device. Both give the same flags.
      common: a score expected to be frequent (zeros of pruned weights,
        the marker ``sparsify`` gives pruned entries): the device selection
        counts it apart, faster; any value gives the same flags.

    Returns:
      ``bool`` arrays of ``units``' shapes.
    """
    if isinstance(ks, _leaves.RowCounts) and host:
        ks = [ks[i] for i in range(len(ks))]  # the host paths take a count array per unit
    if isinstance(ks, _leaves.RowCounts):  # (only "layer" counts come as one vector)
        ks_list = [ks.per_leaf]  # its pieces would be dead code in the program
    else:
        ks_list = [ks] if scope == "global" else list(ks)
    concrete = _concrete_on_cpu(list(units)) and not any(
        isinstance(k, jax.core.Tracer) for k in ks_list
    )
    if host and concrete:
        # Eager on CPU: the numpy selection directly, with no compilation.
        flags = _host_global(units, ks) if scope == "global" else _host_rows(units, ks)
        if all(isinstance(u, np.ndarray) for u in units):
            return flags  # numpy in, numpy out (the caller's eager path stays in numpy)
        return [jax.device_put(f) for f in flags]  # jnp.asarray would compile once per shape
    if host and jax.default_backend() == "cpu":
        shapes = [jax.ShapeDtypeStruct(u.shape, jnp.bool_) for u in units]
        fn = _host_global if scope == "global" else _host_rows
        return jax.pure_callback(fn, shapes, list(units), ks, vmap_method="sequential")
    if scope == "global":
        return _device_global(units, ks, common)
    return _device_rows(units, ks, common)
