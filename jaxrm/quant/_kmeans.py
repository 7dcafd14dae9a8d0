"""Weight sharing by 1-D k-means (Deep Compression's trained quantization).

In one dimension, nearest-centroid assignment with sorted centroids is a
partition of the sorted weights at the centroid midpoints. So the weights are
sorted once, prefix sums are taken once, and each Lloyd step is a
``searchsorted`` of the ``k - 1`` midpoints plus ``k`` differences of prefix
sums: O(k log n) per iteration instead of the O(n k) of a distance matrix.

This runs on the host in numpy: numpy's (SIMD) sort of a float32 array is an
order of magnitude faster than XLA's CPU sort, the float64 prefix sums are
exact enough without enabling ``jax_enable_x64``, and a Lloyd step costs a few
microseconds, so the data-dependent stopping test (a fixed point of the
assignment) is a plain Python loop rather than a compiled ``while_loop``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import tree as jtree
from jaxrm.quant import _common
from jaxrm.quant._types import Codebook

INITS = ("linear", "density", "random", "kmeans++")
DEFAULT_ITERS = 300


# ----------------------------------------------------------------------------- inits


def _init_linear(s: np.ndarray, k: int, rng: Any) -> np.ndarray:
    """``k`` centroids evenly spaced over ``[min, max]`` (the paper's best)."""
    del rng
    return np.linspace(float(s[0]), float(s[-1]), k)


def _init_density(s: np.ndarray, k: int, rng: Any) -> np.ndarray:
    """``k`` centroids evenly spaced over the CDF: ``F^-1((j + 1/2) / k)``.

    ``F^-1(p)`` is the smallest weight ``w`` with ``P(W <= w) >= p``.
    """
    del rng
    n = s.size
    p = (np.arange(k) + 0.5) / k
    idx = np.clip(np.ceil(p * n).astype(np.int64) - 1, 0, n - 1)
    return s[idx].astype(np.float64)


def _init_random(s: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Forgy: ``k`` distinct weights (positions) drawn uniformly without replacement."""
    idx = rng.choice(s.size, size=k, replace=False)
    return np.sort(s[idx].astype(np.float64))


def _init_kmeanspp(s: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ (Arthur & Vassilvitskii 2007): each next centroid is a weight
    drawn with probability proportional to its squared distance to the nearest
    centroid chosen so far. O(n k)."""
    n = s.size
    chosen = [float(s[rng.integers(n)])]
    d2 = np.square(s.astype(np.float64) - chosen[0])
    for _ in range(1, k):
        cum = np.cumsum(d2)
        i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        c = float(s[min(i, n - 1)])
        chosen.append(c)
        np.minimum(d2, np.square(s - c), out=d2)
    return np.sort(np.asarray(chosen, np.float64))


_INIT_FNS = {
    "linear": _init_linear,
    "density": _init_density,
    "random": _init_random,
    "kmeans++": _init_kmeanspp,
}


# ----------------------------------------------------------------------------- Lloyd


def _thresholds(centroids: np.ndarray, dtype: Any) -> np.ndarray:
    """Midpoints of sorted float64 ``centroids`` rounded *down* to ``dtype``.

    For ``x`` of ``dtype``, ``x > t`` holds exactly when ``x > midpoint``, so the
    comparisons run in the weights' own dtype without converting them.
    """
    mid = (centroids[:-1] + centroids[1:]) * 0.5
    t = mid.astype(dtype)
    return np.where(t > mid, np.nextafter(t, np.asarray(-np.inf, dtype)), t)


def lloyd(s: np.ndarray, centroids: np.ndarray, iters: int) -> tuple[np.ndarray, int]:
    """Runs Lloyd's algorithm on sorted 1-D ``s`` from sorted ``centroids``.

    Each weight joins its nearest centroid (the lower one on an exact tie); an
    empty cluster keeps its previous centroid. Stops after ``iters`` updates or
    at a fixed point (an assignment equal to the previous one).

    Returns:
      The centroids (float64, sorted) and the number of updates made.
    """
    prefix = np.empty(s.size + 1, np.float64)
    prefix[0] = 0.0
    np.cumsum(s, dtype=np.float64, out=prefix[1:])
    # Searching float64 midpoints in a float64 copy keeps the comparisons exact
    # and avoids numpy converting ``s`` on every call.
    s64 = s if s.dtype == np.float64 else s.astype(np.float64)
    c = centroids.astype(np.float64)
    # Cluster j holds s[edges[j]:edges[j + 1]]: the weights <= midpoint j.
    edges = np.empty(c.size + 1, np.int64)
    edges[0], edges[-1] = 0, s.size
    previous = b""
    for it in range(iters):
        bounds = s64.searchsorted((c[:-1] + c[1:]) * 0.5, side="right")
        key = bounds.tobytes()
        if key == previous:
            return c, it
        edges[1:-1] = bounds
        counts = edges[1:] - edges[:-1]
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        if counts.all():
            c = sums / counts
        else:
            c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        previous = key
    return c, iters


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centroids`` for each entry of ``x``
    (the lower one on an exact tie), as an unsigned or ``intp`` integer array."""
    t = _thresholds(centroids, x.dtype)
    if t.size <= 64:  # k compare-and-add passes beat a binary search per entry
        labels = np.zeros(x.shape, np.uint8)
        for v in t:
            labels += x > v
        return labels
    return np.searchsorted(t, x, side="left")


def cluster(
    values: np.ndarray, k: int, init: str, iters: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means of a flat array; returns ``(centroids float64, integer labels)``.

    If ``values`` has at most ``k`` distinct entries, the centroids are those
    entries (fewer than ``k``, zero error). No entries give one centroid 0.0.
    """
    if values.size == 0:
        return np.zeros(1), np.zeros(0, np.uint8)
    s = np.sort(values)
    distinct = 1 + int(np.count_nonzero(s[1:] != s[:-1]))
    if distinct <= k:
        c = s[np.concatenate([[True], s[1:] != s[:-1]])].astype(np.float64)
    else:
        c = np.sort(_INIT_FNS[init](s, k, rng))
        c, _ = lloyd(s, c, iters)
    return c, assign(values, c)


# ----------------------------------------------------------------------------- public


def _key_words(key: Any) -> list[int]:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    if not jnp.issubdtype(key.dtype, jnp.integer):
        raise TypeError(f"key must be a jax.random key, got an array of dtype {key.dtype}")
    return [int(w) for w in np.asarray(key).ravel()]


def kmeans(
    params: Any,
    bits: Any,
    *,
    masks: Any = None,
    init: str = "linear",
    iters: int = DEFAULT_ITERS,
    key: Any = None,
    where: jtree.Where = None,
    stacked: Any = None,
) -> Any:
    """Weight sharing: replaces each selected leaf by a ``Codebook`` of 1-D k-means.

    For every selected leaf, the unpruned weights are clustered into
    ``k = 2**bits`` clusters by Lloyd's algorithm, in one dimension: weights
    are sorted once and each iteration is a ``searchsorted`` of the ``k - 1``
    centroid midpoints plus prefix sums (O(k log n) per iteration). Each weight
    joins its nearest centroid (the lower one on an exact tie). The iteration
    stops at a fixed point of the assignment or after ``iters`` updates.

    Rules:

    * pruned entries (``False`` in the leaf's mask) take no part in the
      clustering, get index 0 and keep the mask in the ``Codebook``, so they
      decode to exactly 0;
    * an empty cluster keeps its previous centroid (it stays in the codebook
      unused; in 1-D this keeps the centroids sorted);
    * a leaf with at most ``k`` distinct unpruned values gets exactly those
      values as its centroids (fewer than ``k``, zero error); a leaf with
      every entry pruned gets the single centroid 0.0.

    Centroids are sorted ascending and stored as float32 (float64 for float64
    leaves); indices are uint8 up to 8 bits and uint16 above.

    Inits (``k`` centroids from the sorted unpruned weights ``s``):

    * ``"linear"``: evenly spaced over ``[min, max]`` (Deep Compression's best);
    * ``"density"``: evenly spaced over the CDF, ``F^-1((j + 1/2) / k)``
      where ``F^-1(p)`` is the smallest weight with ``P(W <= w) >= p``;
    * ``"random"``: Forgy, ``k`` weights drawn without replacement;
    * ``"kmeans++"``: D² sampling (Arthur & Vassilvitskii, 2007).

    The random inits need ``key``; the result is a deterministic function of
    ``key`` (each leaf uses its own stream, derived from ``key`` and the leaf's
    position in the selection). This runs on the host with numpy and is not
    traceable: call it outside ``jit`` (the ``Codebook`` it returns works
    anywhere).

    Args:
      params: any pytree of parameters.
      bits: bits per index in ``[1, 16]``: an int, a pytree of ``params``'
        structure holding ints (``None`` leaves stay float), or a callable
        ``(path, leaf) -> int | None`` (e.g. 8 for convolutions, 5 for dense).
      masks: ``None`` or a pytree of ``params``' structure with a ``bool``
        array (``False`` = pruned) or ``None`` (dense) per leaf.
      init: ``"linear"``, ``"density"``, ``"random"`` or ``"kmeans++"``; a
        per-leaf setting.
      iters: the maximum number of Lloyd updates (``0`` keeps the init).
      key: a ``jax.random`` key, required by ``"random"`` and ``"kmeans++"``.
      where: which leaves to share (default: ``jaxrm.tree.weights``).
      stacked: stacked axes as a per-leaf setting (int, tuple or ``None``);
        default: inferred from the layout. Each stacked slice gets its own
        codebook: ``centroids`` then has the slices' sizes on the stacked
        axes, 1 on the others, and the codebook axis last.

    Returns:
      A pytree of ``params``' structure with ``Codebook`` leaves where shared.

    Raises:
      ValueError: ``bits`` out of range, unknown ``init``, negative ``iters``,
        NaN/Inf among the unpruned weights, ``masks`` or ``bits`` of another
        structure or shape, ``where`` selecting nothing, or a random init
        without ``key``.
      TypeError: ``where`` selects an integer or non-array leaf, a mask is not
        boolean, ``bits``/``iters`` are not ints, or a leaf is traced.
    """
    if isinstance(iters, bool) or not isinstance(iters, int | np.integer):
        raise TypeError(f"iters must be an int, got {iters!r}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    words = None
    if isinstance(init, str):
        _common.check_choice(init, INITS, "init")
    mask_of = _common.masks_by_path(params, masks)
    found = _common.targets(
        params, where, bits=bits, bits_range=(1, 16), finite=False, nonempty=False,
        settings={"init": (init, lambda v: isinstance(v, str))}, stacked=stacked,
    )
    # Validate every selected leaf before clustering any.
    plan = []
    for position, t in enumerate(found):
        leaf_init = _common.check_choice(t.settings["init"], INITS, "init")
        if leaf_init in ("random", "kmeans++") and words is None:
            if key is None:
                raise ValueError(f"init={leaf_init!r} (leaf {t.path!r}) needs a key")
            words = _key_words(key)
        if not _common.is_concrete(t.leaf):
            raise TypeError(f"params leaf {t.path!r} is traced; kmeans runs outside jit")
        m = mask_of(t.path, t.leaf)
        if m is not None and not _common.is_concrete(m):
            raise TypeError(f"masks at leaf {t.path!r} is traced; kmeans runs outside jit")
        x = np.asarray(t.leaf)
        work = np.float64 if x.dtype == np.float64 else np.float32
        x = x.astype(work)
        m = None if m is None else np.asarray(m)
        kept = x if m is None else x[m]
        if not np.all(np.isfinite(kept)):
            bad = int(kept.size - np.count_nonzero(np.isfinite(kept)))
            raise ValueError(f"params leaf {t.path!r} has {bad} NaN or Inf unpruned entries")
        plan.append((position, t, leaf_init, x, m))

    new = {}
    for position, t, leaf_init, x, m in plan:
        rng = None
        if words is not None:
            rng = np.random.default_rng(np.random.SeedSequence(words, spawn_key=(position,)))
        new[t.path] = _share(t, x, m, leaf_init, int(iters), rng)
    return _common.rebuild(params, where, new)


def _share(t, x: np.ndarray, m: np.ndarray | None, init: str, iters: int, rng) -> Codebook:
    """One codebook per stacked slice of ``x`` (one for the whole leaf if unstacked)."""
    stacked = t.axes.stacked
    rest = [i for i in range(x.ndim) if i not in stacked]
    order = [*stacked, *rest]
    n_slices = int(np.prod([x.shape[i] for i in stacked], dtype=np.int64))
    xs = np.transpose(x, order).reshape(n_slices, -1)
    ms = None if m is None else np.transpose(m, order).reshape(n_slices, -1)
    index_dtype = np.uint8 if t.bits <= 8 else np.uint16
    indices = np.zeros(xs.shape, index_dtype)
    books = []
    for j in range(n_slices):
        kept = xs[j] if ms is None else xs[j][ms[j]]
        centroids, labels = cluster(kept, 2**t.bits, init, iters, rng)
        if ms is None:
            indices[j] = labels
        else:
            indices[j][ms[j]] = labels
        books.append(centroids.astype(x.dtype))
    k = max(b.size for b in books)
    # Slices with fewer distinct values repeat their last centroid (never indexed).
    table = np.stack([np.pad(b, (0, k - b.size), mode="edge") for b in books])
    inverse = np.argsort(order)
    indices = np.transpose(indices.reshape([x.shape[i] for i in order]), inverse)
    if stacked:
        # Centroids broadcast against the indices: the slices' sizes on the
        # stacked axes, 1 elsewhere, then the codebook axis.
        shape = [x.shape[i] if i in stacked else 1 for i in range(x.ndim)]
        table = table.reshape(*shape, k)
    else:
        table = table[0]
    return Codebook(
        indices=jnp.asarray(indices),
        centroids=jnp.asarray(table),
        mask=None if m is None else jnp.asarray(m),
        bits=t.bits,
        dtype=str(t.leaf.dtype),
    )
