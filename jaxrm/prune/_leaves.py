"""The leaves one pruning call works on: flattened once, selected, checked, with layouts.

Also the argument checks every pruning function shares (sparsity, scope,
pattern) and the kept count ``round((1 - s) * n)``.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import _checks
from jaxrm import tree as jtree
from jaxrm.prune import _patterns

__all__ = [
    "SCOPES", "Plan", "RowCounts", "check_scope", "check_sparsity", "is_scalar", "is_traced",
    "kept_counts", "plan", "row_counts", "sparsities",
]

SCOPES = ("layer", "global")


def is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def is_scalar(value: Any) -> bool:
    """A value that is one sparsity for every leaf (possibly a bad one, checked later)."""
    if isinstance(value, bool | str | bytes | numbers.Number | np.generic):
        return True
    return jtree.is_array(value) and tuple(np.shape(value)) == ()


def check_scope(scope: Any) -> str:
    return _checks.choice(scope, "scope", SCOPES)


def check_sparsity(value: Any, argument: str = "sparsity", path: str | None = None) -> Any:
    """Returns ``value`` as a float (or a traced scalar), raising if it is not in [0, 1)."""
    where = _checks.at(path)
    if isinstance(value, bool | np.bool_) or not (
        isinstance(value, numbers.Real) or (jtree.is_array(value) and np.shape(value) == ())
    ):
        raise TypeError(
            f"{argument}{where} must be a float in [0, 1), got {type(value).__name__}"
        )
    if jtree.is_array(value) and not jnp.issubdtype(value.dtype, jnp.number):
        raise TypeError(f"{argument}{where} must be a number, got dtype {value.dtype}")
    if is_traced(value):
        return value
    s = float(value)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"{argument}{where} must be in [0, 1), got {s}")
    return s


def _exact_count(s: float, n: int) -> int:
    """``round((1 - s) * n)``, half to even, in exact rational arithmetic; ``s`` clamped."""
    if math.isnan(s) or s <= 0.0:
        return n
    if s >= 1.0:
        return 0
    return round((1 - fractions.Fraction(s)) * n)


def _cmp64(a_hi, a_lo, b_hi, b_lo):
    """The sign of ``a - b`` for unsigned 64-bit values held as uint32 pairs."""
    lo = jnp.where(a_lo > b_lo, 1, jnp.where(a_lo < b_lo, -1, 0))
    return jnp.where(a_hi != b_hi, jnp.where(a_hi > b_hi, 1, -1), lo)


def _exact_counts_device(s: jax.Array, ns: np.ndarray) -> jax.Array:
    """``round((1 - s) * n)`` per entry, half to even, exactly, in uint32 arithmetic.

    A float32 ``s`` in ``(0, 1)`` is ``m * 2^-q`` (``m < 2^24``, ``q >= 24``), so
    ``(1 - s) * n = n - P / 2^q`` with ``P = m * n < 2^55``, formed from 16-bit
    limbs as two uint32 words; its integer part and the remainder's comparison
    with ``2^(q - 1)`` give the rounding. (A host callback did this before: about
    a millisecond per refresh.)
    """
    u32 = jnp.uint32
    n = jnp.asarray(ns, u32)
    bits = jax.lax.bitcast_convert_type(s, u32)
    e = (bits >> 23) & u32(0xFF)
    m = jnp.where(e > 0, (bits & u32(0x7FFFFF)) | u32(0x800000), bits & u32(0x7FFFFF))
    q = jnp.where(e > 0, 150 - e.astype(jnp.int32), 149)  # s = m * 2^-q
    a1, a0, b1, b0 = m >> 16, m & u32(0xFFFF), n >> 16, n & u32(0xFFFF)
    mid = a0 * b1 + a1 * b0  # < 2^32
    lo = a0 * b0 + (mid << 16)
    hi = a1 * b1 + (mid >> 16) + (lo < a0 * b0).astype(u32)
    qq = jnp.clip(q, 24, 56).astype(u32)
    small = qq < 32  # the remainder lies in the low word
    whole = jnp.where(small, (hi << (32 - qq)) | (lo >> qq), hi >> (qq - 32))
    r_small = lo & ((u32(1) << qq) - 1)
    r_hi = hi & ((u32(1) << (qq - 32)) - 1)
    half_hi = jnp.where(qq == 32, u32(0), u32(1) << (qq - 33))
    half_lo = jnp.where(qq == 32, u32(0x80000000), u32(0))
    zero = jnp.where(small, r_small == 0, (r_hi == 0) & (lo == 0))
    c = jnp.where(small, _cmp64(u32(0), r_small, u32(0), u32(1) << (qq - 1)),
                  _cmp64(r_hi, lo, half_hi, half_lo))
    base = n - whole  # n - x = base - remainder / 2^q
    kept = jnp.where(zero | (c < 0), base,
                     jnp.where((c > 0) | ((base & 1) == 1), base - 1, base))
    kept = jnp.where(q > 56, n, kept)  # x < 1/2
    kept = jnp.where(jnp.isnan(s) | (s <= 0), n, jnp.where(s >= 1, u32(0), kept))
    return kept.astype(jnp.int32)


def kept_counts(sparsities: list, ns: list[int]) -> list:
    """``round((1 - s) * n)`` per pair, ``s`` read as a float32: the same eagerly and under jit.

    Schedules and traced sparsities are float32, so the count is defined on the
    float32 value of the sparsity and computed exactly (round half to even) on
    both paths: rational arithmetic on Python ints for concrete sparsities, and
    exact uint32 arithmetic in the program for all traced ones at once. Traced
    values outside ``[0, 1)`` are clamped (NaN and negatives keep everything,
    ``>= 1`` prunes everything); concrete ones are checked before they get here.
    """
    out: list = [None] * len(ns)
    traced = [i for i, s in enumerate(sparsities) if is_traced(s)]
    for i, (s, n) in enumerate(zip(sparsities, ns)):
        if i not in traced:
            out[i] = _exact_count(float(np.float32(s)), n)
    if traced:
        s = jnp.stack([jnp.asarray(sparsities[i], jnp.float32).reshape(()) for i in traced])
        counts = _exact_counts_device(s, np.asarray([ns[i] for i in traced], np.int64))
        for j, i in enumerate(traced):
            out[i] = counts[j]
    return out


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RowCounts:
    """Kept counts of the slices of several leaves, held as one traced vector.

    Under ``jit`` a count per leaf would be a static slice of the counts
    computed together, and XLA compiles each static slice as a kernel of its
    own: the compile then grew with the number of leaves. The counts stay one
    vector until the selection reads the rows of one length (one gather).

    Attributes:
      per_leaf: ``(leaves,)`` int32, the count of every slice of each leaf.
      slices: each leaf's number of slices (static).
    """

    per_leaf: jax.Array
    slices: tuple[int, ...] = dataclasses.field(metadata={"static": True})

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> jax.Array:
        """Leaf ``i``'s ``(slices,)`` counts (a slice of its own: for the rare paths)."""
        return jnp.full((self.slices[i],), self.per_leaf[i], jnp.int32)

    def subset(self, leaves: list[int]) -> RowCounts:
        """The counts of ``leaves`` (positions in this vector), in that order."""
        if list(leaves) == list(range(len(self))):
            return self
        return RowCounts(self.per_leaf[np.asarray(leaves, np.int32)],
                         tuple(self.slices[i] for i in leaves))

    def rows(self, leaves: list[int]) -> jax.Array:
        """The counts of every row of ``leaves``, concatenated (one gather)."""
        if list(leaves) == list(range(len(self))) and all(n == 1 for n in self.slices):
            return self.per_leaf
        index = np.repeat(np.asarray(leaves, np.int32), [self.slices[i] for i in leaves])
        return self.per_leaf[index]


def row_counts(sparsities: Any, units: list[int], slices: list[int]) -> RowCounts:
    """``round((1 - s) * n)`` of each leaf in the program, as one vector (see `RowCounts`).

    ``sparsities`` is a ``(leaves,)`` array or a list of (possibly traced) scalars.
    """
    if isinstance(sparsities, list | tuple):
        sparsities = jnp.stack([jnp.asarray(s, jnp.float32).reshape(()) for s in sparsities])
    s = jnp.asarray(sparsities, jnp.float32).reshape(-1)
    counts = _exact_counts_device(s, np.asarray(units, np.int64))
    return RowCounts(counts, tuple(int(n) for n in slices))


@dataclasses.dataclass(frozen=True)
class Plan:
    """The selected leaves of one call.

    Attributes:
      flat: the whole tree, flattened once.
      picked: indices (in ``flat``) of the selected leaves.
      layouts: the layout of each picked leaf.
      patterns: each picked leaf's pattern, axes in one slice's coordinates.
    """

    flat: jtree.Flat
    picked: tuple[int, ...]
    layouts: tuple[jtree.Layout, ...]
    patterns: tuple[Any, ...]

    @property
    def paths(self) -> list[str]:
        return [self.flat.paths[i] for i in self.picked]

    @property
    def leaves(self) -> list[Any]:
        return [self.flat.leaves[i] for i in self.picked]

    @property
    def chosen(self) -> list[bool]:
        marks = [False] * len(self.flat)
        for i in self.picked:
            marks[i] = True
        return marks

    def tree(self, values: list) -> Any:
        """A tree of the input's structure: ``values`` at the picked leaves, ``None`` elsewhere."""
        leaves: list = [None] * len(self.flat)
        for i, v in zip(self.picked, values):
            leaves[i] = v
        return self.flat.unflatten(leaves)


def plan(tree: Any, where: jtree.Where, *, pattern: Any = None, stacked: Any = None) -> Plan:
    """Flattens ``tree`` once and checks the leaves ``where`` selects.

    Raises:
      ValueError: ``where`` selects nothing, a bad layout or a pattern that
        does not fit a leaf (naming the leaf path).
      TypeError: a selected leaf is not a floating array, or a bad pattern type.
    """
    fl = jtree.flatten(tree)
    pred = jtree.predicate(where, fl)
    chosen = [bool(pred(p, x)) for p, x in fl.items()]
    if not any(chosen):
        shown = ", ".join(fl.paths[:12]) or "(no leaves)"
        raise ValueError(f"where={where!r} selects no leaf; the leaves are: {shown}")
    picked = tuple(i for i, c in enumerate(chosen) if c)
    for i in picked:
        path, leaf = fl.paths[i], fl.leaves[i]
        if not jtree.is_array(leaf):
            raise TypeError(f"where selects leaf {path!r}, which is not an array")
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(
                f"where selects leaf {path!r} of dtype {leaf.dtype}; only floating "
                "leaves can be pruned"
            )
    lays = jtree.layouts(fl, stacked=stacked, only=chosen)
    pats = jtree.resolve(pattern, fl, argument="pattern", only=chosen, default=None)
    return Plan(
        fl,
        picked,
        tuple(lays[i] for i in picked),
        tuple(_patterns.in_slice(pats[i], lays[i], fl.paths[i]) for i in picked),
    )


def sparsities(p: Plan, sparsity: Any) -> list:
    """One checked sparsity per picked leaf, from any per-leaf setting."""
    if is_scalar(sparsity):
        s = check_sparsity(sparsity)
        return [s] * len(p.picked)
    values = jtree.resolve(sparsity, p.flat, argument="sparsity", only=p.chosen)
    out = []
    for i in p.picked:
        path = p.flat.paths[i]
        if values[i] is None:
            raise ValueError(f"sparsity has None at leaf {path!r}, which where selects")
        out.append(check_sparsity(values[i], "sparsity", path))
    return out
