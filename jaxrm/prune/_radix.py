"""The device selection: an exact radix selection on the bits of float32 scores.

The bits are mapped to ``uint32`` keys that order like the floats; a histogram
of the high 16 bits finds the bucket that holds the k-th key, and a histogram
of the low 16 bits inside that bucket finds the key itself: two counting
passes instead of an ``O(n log n)`` sort. Ties at the k-th key are kept by
lowest flat index (a second radix selection on the indices, only when needed).

The histograms read their scores a chunk at a time (`_CHUNK` entries), so the
scatter's indices and unit updates are cache-sized temporaries: full-size ones
were written to fresh pages on every call, costing more than the counting.
XLA's CPU scatter adds one entry at a time, and how fast depends on where the
entries go (4M entries, measured): random buckets 1.7 ns an entry, a run into
one bucket 4 ns (each add waits on the previous one), a random mix of counted
and dropped (out-of-range) entries 3.4 ns (a mispredicted branch each time),
spare slots on 16 cache lines in turn 1.2 ns. So the entries of one frequent
bucket (``common``: the marker ``sparsify`` gives pruned entries, or zeros) go
to spare slots, and that bucket gets what no other bucket counted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["flags", "keys", "threshold"]

_HALF = 16
_BINS = 1 << _HALF
_LOW = _BINS - 1
_SPARES, _LINE = 16, 16  # spare histogram slots: 16 cache lines of 16 int32
_SIZE = _BINS + _SPARES * _LINE
_CHUNK = 1 << 16


def keys(u: jax.Array) -> jax.Array:
    """Maps float32 scores to uint32 keys with the same order (NaN lowest, -0 == +0)."""
    u = jnp.where(jnp.isnan(u), -jnp.inf, u)
    u = jnp.where(u == 0, jnp.zeros((), u.dtype), u)
    bits = jax.lax.bitcast_convert_type(u, jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _suffix_sums(h: jax.Array) -> jax.Array:
    """``out[r] = sum(h[r:])`` of a short vector, as a masked sum over a triangle.

    ``jnp.cumsum`` lowers to a reduce-window whose CPU compilation took about
    half a second per use; the triangle of 256 x 256 compiles at once.
    """
    i = jnp.arange(h.shape[0])
    return jnp.sum(jnp.where(i[None, :] >= i[:, None], h[None, :], 0), axis=1, dtype=h.dtype)


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


# A source is ``(scores, row, offset)``: row ``row`` (an int, or traced) of the 2-D
# float32 ``scores``, whose entries have flat indices ``offset + position``.


def _histogram(sources, slot_of, mode: str) -> jax.Array:
    """Counts of ``slot_of(keys, index)`` over all sources' entries, chunk by chunk
    (slots ``>= _BINS`` are spare, or dropped with ``mode="drop"``)."""
    def add(table, scores, row, start, size, offset):
        chunk = jax.lax.dynamic_slice(scores, (row, start), (1, size))[0]
        # uint32 flat indices (offsets of leaves ranked together may pass 2^31)
        index = (jnp.arange(size, dtype=jnp.uint32) + jnp.asarray(start).astype(jnp.uint32)
                 + jnp.uint32(offset))
        slot = slot_of(keys(chunk), index, jnp.arange(size, dtype=jnp.int32))
        return table.at[slot].add(1, mode=mode)

    table = jnp.zeros(_SIZE, jnp.int32)
    for scores, row, offset in sources:
        n = scores.shape[1]
        full, rest = divmod(n, _CHUNK)
        if full > 1:
            table = jax.lax.fori_loop(
                0, full, lambda c, t, s=scores, r=row, o=offset: add(
                    t, s, r, c * _CHUNK, _CHUNK, o), table)
        elif full == 1:
            table = add(table, scores, row, 0, _CHUNK, offset)
        if rest:
            table = add(table, scores, row, full * _CHUNK, rest, offset)
    return table[:_BINS]


def _spare(position: jax.Array) -> jax.Array:
    return _BINS + (position & (_SPARES - 1)) * _LINE


def _kth_key(sources, k: jax.Array, key_of, common: jax.Array):
    """``(t, greater, ties)``: the k-th highest of ``key_of(keys, index)`` over all
    sources' entries, the count above it and the count equal to it."""
    total = sum(s.shape[1] for s, _, _ in sources)
    c_high = (common >> _HALF).astype(jnp.int32)

    def high_slot(kk, index, position):
        high = (key_of(kk, index) >> _HALF).astype(jnp.int32)
        return jnp.where(high == c_high, _spare(position), high)

    hist = _histogram(sources, high_slot, "promise_in_bounds")
    hist = hist.at[c_high].add(total - jnp.sum(hist))
    b, above = _bucket_of_kth(hist, k)
    need = k - above

    c_low = (common & _LOW).astype(jnp.int32)
    apart = b == c_high  # the k-th key shares common's bucket: count common apart too

    def low_slot(kk, index, position):
        key = key_of(kk, index)
        slot = jnp.where((key >> _HALF).astype(jnp.int32) == b,
                         (key & _LOW).astype(jnp.int32), _SIZE)
        return jnp.where(apart & (key == common), _spare(position), slot)

    low = _histogram(sources, low_slot, "drop")
    low = low.at[c_low].add(jnp.where(apart, hist[b] - jnp.sum(low), 0))
    b2, above_low = _bucket_of_kth(low, need)
    t = (b.astype(jnp.uint32) << _HALF) | b2.astype(jnp.uint32)
    return t, above + above_low, low[b2]


def threshold(sources, k: jax.Array, common: float = 0.0):
    """``(t, t_index, keep_ties)``: the scalars `flags` needs to keep exactly the ``k``
    highest scores over all ``sources`` (ties by flat index). ``common`` is a score
    expected to be frequent; any value gives the same result."""
    k = jnp.asarray(k, jnp.int32)
    t, greater, ties = _kth_key(sources, k, lambda kk, index: kk, keys(jnp.float32(common)))
    wanted_ties = k - greater

    def first_ties():
        # The first ``wanted_ties`` ties by flat index are the highest of the keys
        # ``~index`` among the ties (other entries 0, counted apart): a second radix
        # selection on unique keys, so no further ties (and no cumsum, slow to
        # compile on CPU).
        def rank(kk, index):
            return jnp.where(kk == t, ~index, jnp.uint32(0))

        return _kth_key(sources, wanted_ties, rank, jnp.uint32(0))[0]

    # All ties wanted: ``~index >= 0`` keeps every one.
    t_index = jax.lax.cond(wanted_ties == ties, lambda: jnp.uint32(0), first_ties)
    return t, t_index, wanted_ties > 0


def flags(kk: jax.Array, index: jax.Array, t, t_index, keep_ties) -> jax.Array:
    """Keep-flags from `threshold`'s scalars (or arrays broadcasting against ``kk``)."""
    return (kk > t) | ((kk == t) & (~index >= t_index) & keep_ties)
