"""Per-leaf bits and sparsity under a byte budget for the ``.jrm`` file."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxrm import coding, prune, quant
from jaxrm import tree as jtree
from jaxrm.budget._joint import sparsegpt_quant
from jaxrm.calib import LeafStats, Stats
from jaxrm.prune import NM

__all__ = ["MENU", "Allocation", "Option", "allocate", "compress"]


@dataclasses.dataclass(frozen=True)
class Option:
    """One menu entry: ``bits`` (``None`` keeps floats) and ``sparsity`` (float or N:M)."""

    bits: int | None = None
    sparsity: float | NM | None = None

    @property
    def label(self) -> str:
        parts = []
        if self.sparsity is not None:
            s = self.sparsity
            parts.append(f"{s.n}:{s.m}" if isinstance(s, NM) else f"{100 * s:g}%")
        parts.append("float" if self.bits is None else f"{self.bits}-bit")
        return " ".join(parts)


MENU = (
    Option(),
    Option(8),
    Option(4),
    Option(3),
    Option(2),
    Option(None, 0.5),
    Option(None, prune.nm(2, 4)),
    Option(8, 0.5),
    Option(4, 0.5),
    Option(4, prune.nm(2, 4)),
    Option(3, 0.5),
)


def compress(params, stats: Stats, path: str, option: Option, *, group_size=None, damp=0.01):
    """One leaf compressed by ``option``: ``(leaf, mask or None)``.

    GPTQ for bits alone, SparseGPT for sparsity alone, the joint SparseGPT
    pass for both; floats are returned as they are.
    """
    where = _exact(path)
    leaf = dict(jtree.leaves_with_paths(params))[path]
    if option.bits is None and option.sparsity is None:
        return leaf, None
    if option.sparsity is None:
        q = quant.gptq(params, stats, option.bits, group_size=group_size, damp=damp, where=where)
        return _get(q, path), None
    if option.bits is None:
        new, masks = prune.sparsegpt(params, stats, option.sparsity, damp=damp, where=where)
        return _get(new, path), _get(masks, path)
    tree, masks = sparsegpt_quant(
        params, stats, option.sparsity, option.bits, damp=damp, where=where
    )
    return _get(tree, path), _get(masks, path)


def _exact(path: str):
    return lambda p, x: p == path


def _get(tree, path):
    """The entry at ``path``, a quantized leaf taken whole."""
    nodes, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: x is None or quant.is_quantized(x)
    )
    for kp, x in nodes:
        if jtree.path_str(kp) == path:
            return x
    raise KeyError(path)


def _weighted_error(ls: LeafStats, w, w_hat) -> float:
    d = ls.matrix(np.asarray(w, np.float64) - np.asarray(w_hat, np.float64))
    return float(np.einsum("sik,sij,sjk->", d, ls.hessian, d, optimize=True))


# A leaf whose every option keeps more entries than this codes its own streams
# (the container pools only shorter runs), so its bytes add to the file's.
_ALONE = 1 << 14


def _kept(value, mask) -> int:
    if mask is not None:
        return int(np.count_nonzero(np.asarray(mask)))
    return math.prod(value.shape)  # QArray, Codebook and arrays all have a shape


def _leaf_bytes(value, mask, entropy) -> int:
    masks = None if mask is None else {"x": mask}
    return len(coding.encode({"x": value}, masks=masks, entropy=entropy))


@dataclasses.dataclass(frozen=True)
class Allocation:
    """The chosen setting per leaf and the file that results.

    Attributes:
      rows: ``(path, option label, leaf bytes, Hessian-weighted error)`` per
        compressed leaf.
      tree: the compressed parameters (``QArray`` leaves, pruned floats).
      masks: kept-entry masks (``None`` at dense leaves), for ``coding.encode``.
      data: the encoded ``.jrm`` file; ``len(data) <= budget``.
      budget: the byte budget asked for.
      error: the summed error of the choice.
    """

    rows: tuple[tuple[str, str, int, float], ...]
    tree: Any
    masks: Any
    data: bytes
    budget: int
    error: float

    def __str__(self) -> str:
        lines = [f"{'leaf':40} {'setting':>12} {'bytes':>10} {'error':>12}"]
        for p, label, b, e in self.rows:
            lines.append(f"{p:40} {label:>12} {b:10d} {e:12.4g}")
        lines.append(f"file {len(self.data)} bytes of a {self.budget} byte budget")
        return "\n".join(lines)


def _choose(costs: np.ndarray, errors: np.ndarray, limit: int, cells: int) -> list[int] | None:
    """Multiple-choice knapsack by dynamic programming over (rounded-up) byte costs."""
    if limit < 0:
        return None
    unit = max(1, math.ceil(limit / cells))
    c = np.ceil(costs / unit).astype(np.int64)
    cap = limit // unit
    n, k = costs.shape
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0
    picks = np.zeros((n, cap + 1), np.int64)
    for i in range(n):
        new = np.full(cap + 1, np.inf)
        for j in range(k):
            if c[i, j] > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[c[i, j] :] = best[: cap + 1 - c[i, j]] + errors[i, j]
            better = cand < new
            new[better], picks[i, better] = cand[better], j
        best = new
    end = int(np.argmin(best))
    if not np.isfinite(best[end]):
        return None
    choice = []
    for i in range(n - 1, -1, -1):
        j = int(picks[i, end])
        choice.append(j)
        end -= int(c[i, j])
    return choice[::-1]


def allocate(
    params: Any,
    stats: Stats,
    budget: int,
    *,
    menu: Sequence[Option] = MENU,
    where: jtree.Where = None,
    group_size: int | None = None,
    damp: float = 0.01,
    entropy: str = "huffman",
    cells: int = 200_000,
) -> Allocation:
    """Chooses per-leaf bits and sparsity so the ``.jrm`` file fits ``budget`` bytes.

    Every leaf with statistics is compressed with every menu option (GPTQ,
    SparseGPT or both); each result's Hessian-weighted error
    ``sum_slices tr(dW^T H dW)`` and its encoded bytes are measured. A
    multiple-choice knapsack (dynamic programming over ``cells`` byte bins,
    costs rounded up) picks the options of least total error whose bytes,
    with the rest of the file, fit; the tree is then encoded and, if the
    file's container overhead pushes it over, the knapsack is solved again
    with that much less room. Settings are per leaf (a stacked leaf takes one
    setting for all its slices).

    Args:
      params: the parameter pytree.
      stats: statistics of ``params`` from [jaxrm.calib.collect][].
      budget: the largest file size in bytes.
      menu: the options each leaf may take (include ``Option()`` to allow floats).
      where: leaves to allocate (default: every leaf with statistics).
      group_size: GPTQ group size for the quantized options.
      damp: relative damping of ``H``.
      entropy: the file's entropy coder (see [jaxrm.coding.encode][]).
      cells: resolution of the dynamic program (exact when ``budget <= cells``).

    Returns:
      An [jaxrm.budget.Allocation][] with the choice, the tree and the file.

    Raises:
      ValueError: an empty menu, or no choice fits the budget (the message
        gives the smallest file the menu allows).
    """
    if not menu:
        raise ValueError("menu is empty")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"budget must be a positive int of bytes, got {budget!r}")
    picked = stats.pick(params, where)
    results, costs, errors, alone = [], [], [], []
    for path, leaf, ls in picked:
        row_r, row_c, row_e = [], [], []
        for opt in menu:
            value, mask = compress(params, stats, path, opt, group_size=group_size, damp=damp)
            w_hat = quant.dequantize(value)
            if mask is not None:
                w_hat = np.where(np.asarray(mask), np.asarray(w_hat), 0.0)
            row_r.append((value, mask))
            row_c.append(_leaf_bytes(value, mask, entropy))
            row_e.append(_weighted_error(ls, leaf, w_hat))
        results.append(row_r)
        alone.append(min(_kept(v, m) for v, m in row_r) > _ALONE)
        costs.append(row_c)
        errors.append(row_e)
    errors_a = np.asarray(errors)
    paths = [p for p, _, _ in picked]
    k = len(menu)
    # The container shares some bytes between small leaves, so a small leaf's cost
    # is measured in context: the file with that leaf switched, against the current
    # choice. A large leaf's streams are its own, so its cost is its bytes alone
    # (the loop below corrects what the compressed manifest makes non-additive).
    # Every file measured is a candidate; the best one that fits is kept.
    choice = list(np.asarray(costs, np.int64).argmin(axis=1))
    seen: dict[tuple, int] = {}

    def size_of(ch) -> int:
        key = tuple(int(c) for c in ch)
        if key not in seen:
            seen[key] = len(_assemble(params, paths, results, key, entropy)[2])
        return seen[key]

    if size_of(choice) > budget:
        raise ValueError(
            f"budget={budget} bytes is below the smallest file this menu allows "
            f"({size_of(choice)} bytes)"
        )
    for _ in range(6):
        base = size_of(choice)
        marginal = np.zeros((len(paths), k), np.int64)
        for i in range(len(paths)):
            if alone[i]:
                marginal[i] = costs[i]
                continue
            for j in range(k):
                alt = list(choice)
                alt[i] = j
                marginal[i, j] = size_of(alt) - base
        marginal -= marginal.min(axis=1, keepdims=True)
        offset = base - int(sum(marginal[i, c] for i, c in enumerate(choice)))
        new = _choose(marginal, errors_a, budget - offset, cells)
        if new is None or new == choice:
            break
        choice = new
    fits = [c for c, n in seen.items() if n <= budget]
    choice = list(min(fits, key=lambda c: (sum(errors_a[i, j] for i, j in enumerate(c)), seen[c])))
    tree, masks, data = _assemble(params, paths, results, choice, entropy)
    costs_a = np.asarray(costs, np.int64)
    rows = tuple(
        (p, menu[j].label, int(costs_a[i, j]), float(errors_a[i, j]))
        for i, (p, j) in enumerate(zip(paths, choice))
    )
    err = float(sum(errors_a[i, j] for i, j in enumerate(choice)))
    return Allocation(rows, tree, masks, data, budget, err)


def _assemble(params, paths, results, choice, entropy):
    chosen = {p: results[i][j] for i, (p, j) in enumerate(zip(paths, choice))}
    tree = jtree.map_selected(lambda p, x: chosen[p][0], params, lambda p, x: p in chosen)
    masks = jtree.map_selected(
        lambda p, x: chosen[p][1],
        params,
        lambda p, x: p in chosen,
        otherwise=lambda p, x: None,
    )
    return tree, masks, coding.encode(tree, masks=masks, entropy=entropy)
