"""Fitting a batch size or a remat policy to a memory budget, by compiling only."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import tqdm

from jaxrm.memory._report import MemoryReport, device_budget, format_bytes, report
from jaxrm.tree import nbytes

__all__ = ["DEFAULT_MARGIN", "choose_policy", "fit_batch"]

Build = Callable[[Any], tuple[Callable[..., Any], Sequence[Any]]]

DEFAULT_MARGIN = 0.10
"""Share of the device's ``bytes_limit`` left free when no budget is given.

The compiled estimate counts one step's buffers; it does not see the
allocator's fragmentation, arrays the script keeps alive beside the step (the
previous batch, prefetched data, metrics) or the workspace some kernels take
at run time, so a step planned at exactly ``bytes_limit`` can still fail.
"""


def _budget(budget_bytes: int | float | None) -> float:
    if budget_bytes is None:
        return device_budget(margin=DEFAULT_MARGIN)
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int | float):
        raise TypeError(
            f"budget_bytes must be a number of bytes, got {type(budget_bytes).__name__}"
        )
    if math.isnan(budget_bytes) or budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be a positive number of bytes, got {budget_bytes}")
    # Compared as given (an int total <= 1.5 is an int total <= 1): no truncation needed,
    # and float("inf") means no limit.
    return budget_bytes


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


def _measure(build: Build, x: Any, argument: str) -> MemoryReport:
    built = build(x)
    if not (isinstance(built, tuple | list) and len(built) == 2 and callable(built[0])):
        raise TypeError(f"{argument}({x!r}) must return (fn, args), got {type(built).__name__}")
    fn, args = built
    return report(fn, *tuple(args), residuals=False)


def _check_params(params: Any, budget: float) -> None:
    if params is not None and nbytes(params) >= budget:
        raise ValueError(
            f"budget_bytes={budget} ({format_bytes(budget)}) is smaller than the parameters "
            f"alone ({nbytes(params)} bytes, {format_bytes(nbytes(params))}); shard them "
            "(memory.fsdp) or give a larger budget"
        )


def _bar(progress: bool | None, desc: str) -> Any:
    # disable=None lets tqdm decide: shown on a terminal, silent in logs and tests
    return tqdm.tqdm(desc=desc, unit="compile", disable=None if progress is None else not progress,
                     leave=False)


class _Search:
    """Memory of each batch size tried (in units of ``multiple_of``), one compile each."""

    def __init__(self, build: Build, multiple_of: int, budget: float, bar: Any):
        self.build, self.m, self.budget, self.bar = build, multiple_of, budget, bar
        self.totals: dict[int, int] = {}

    def total(self, u: int) -> int:
        if u not in self.totals:
            self.totals[u] = _measure(self.build, u * self.m, "build").total_bytes
            fits = "fits" if self.totals[u] <= self.budget else "too big"
            self.bar.set_postfix_str(f"batch {u * self.m}: {format_bytes(self.totals[u])} {fits}")
            self.bar.update(1)
        return self.totals[u]

    def fits(self, u: int) -> bool:
        return self.total(u) <= self.budget

    def bounds(self) -> tuple[int, int | None]:
        """The largest unit count known to fit and the smallest known not to."""
        lo = max(u for u, t in self.totals.items() if t <= self.budget)
        misses = [u for u, t in self.totals.items() if t > self.budget and u > lo]
        return lo, (min(misses) if misses else None)


def _predict(search: _Search, u0: int, u1: int, top: int) -> int:
    """The unit count where the line through two measurements meets the budget."""
    slope = (search.total(u1) - search.total(u0)) / (u1 - u0)
    if slope <= 0:
        return top
    room = search.budget - search.total(u0)
    if math.isinf(room):
        return top
    return int(min(max(u0 + math.floor(room / slope), u0), top))


def _gallop_and_bisect(search: _Search, guess: int, top: int) -> int:
    """Exact boundary near ``guess``: probe 1, 2, 4, ... units away, then bisect."""
    lo, hi = search.bounds()
    step = 1
    if search.fits(guess):
        lo = max(lo, guess)
        while hi is None or hi - lo > 1:
            if hi is None and lo == top:
                return lo
            nxt = min(lo + step, top) if hi is None else min(lo + step, hi - 1)
            if nxt <= lo:
                break
            if search.fits(nxt):
                lo = nxt
                step *= 2
            else:
                hi = nxt
                break
    else:
        hi = guess if hi is None else min(hi, guess)
        while hi - lo > 1:
            nxt = max(hi - step, lo + 1)
            if search.fits(nxt):
                lo = nxt
                break
            hi = nxt
            step *= 2
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        if search.fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def fit_batch(
    build: Build,
    budget_bytes: int | float | None = None,
    *,
    start: int = 1,
    limit: int = 1 << 20,
    multiple_of: int = 1,
    params: Any = None,
    progress: bool | None = None,
) -> int:
    """Returns the largest batch size whose compiled step fits ``budget_bytes``.

    Memory of a training step is, for most programs, affine in the batch size
    (parameters and optimizer state, plus activations per example). So the
    search compiles two batch sizes (``start`` and eight times it), predicts
    where the line meets the budget, and verifies the prediction and the next
    batch size: four compilations when memory is affine. When the check fails
    (padding, a compiler switching algorithms with the size), it probes
    outward from the prediction by 1, 2, 4, ... and bisects; the answer is the
    same as a full bisection's whenever memory grows with the batch. Only
    compiles (``jax.ShapeDtypeStruct`` arguments suffice): nothing runs out of
    memory to find out. Some compilers special-case batch 1; pass ``start=2``
    or more if its report looks out of line.

    Args:
      build: ``build(batch_size) -> (fn, args)``, the step to measure.
      budget_bytes: bytes per device (int or float; compared as given, not
        truncated; ``float("inf")`` means no limit). Defaults to the device's
        ``memory_stats()["bytes_limit"]`` less [jaxrm.memory.DEFAULT_MARGIN][]
        (GPU/TPU; required on CPU).
      start: the smallest batch size to try, rounded up to a multiple of
        ``multiple_of``.
      limit: the largest batch size to try.
      multiple_of: only batch sizes divisible by this are tried (e.g. the
        number of data-parallel devices or micro-batches).
      params: the parameters, to fail early when they alone exceed the budget.
      progress: show a progress bar (``None``: only on a terminal).

    Returns:
      The batch size: ``report(*build(b)).total_bytes <= budget_bytes``, and
      the next multiple of ``multiple_of`` does not fit or exceeds ``limit``.

    Raises:
      TypeError: ``start``/``limit``/``multiple_of`` not ints, ``budget_bytes``
        not a number, or ``build`` does not return ``(fn, args)``.
      ValueError: non-positive or NaN values; no multiple of ``multiple_of``
        in ``[start, limit]``; the parameters alone exceed the budget; or even
        the first batch size does not fit (the message gives what it needs).
    """
    budget = _budget(budget_bytes)
    start = _positive_int("start", start)
    limit = _positive_int("limit", limit)
    multiple_of = _positive_int("multiple_of", multiple_of)
    u0, top = -(-start // multiple_of), limit // multiple_of
    if u0 > top:
        raise ValueError(
            f"no multiple of multiple_of={multiple_of} lies in [start={start}, limit={limit}]"
        )
    _check_params(params, budget)
    with _bar(progress, "fit_batch") as bar:
        search = _Search(build, multiple_of, budget, bar)
        if not search.fits(u0):
            first = search.total(u0)
            raise ValueError(
                f"even batch size {u0 * multiple_of} needs {first} bytes ({format_bytes(first)}) "
                f"per device, more than budget_bytes={budget} ({format_bytes(budget)}). Use "
                "remat, sharding or gradient accumulation (memory.accumulate)"
            )
        if u0 == top:
            return u0 * multiple_of
        u1 = min(8 * u0, top)
        guess = _predict(search, u0, u1, top)
        return _gallop_and_bisect(search, guess, top) * multiple_of


def choose_policy(
    build: Build,
    budget_bytes: int | float | None = None,
    *,
    policies: Sequence[str] = ("none", "dots", "dots_no_batch", "full"),
    params: Any = None,
    progress: bool | None = None,
) -> str:
    """Returns the remat policy that fits the budget with the least recomputation.

    Each ``build(policy)`` is compiled; among the policies whose peak estimate
    fits, the one with the fewest FLOPs (``cost_analysis()``) wins, ties going
    to the earlier in ``policies``.

    Args:
      build: ``build(policy_name) -> (fn, args)``, the step under that policy
        (e.g. using [`remat`][jaxrm.memory.remat]).
      budget_bytes: bytes per device; defaults to the device's
        ``memory_stats()["bytes_limit"]`` less [jaxrm.memory.DEFAULT_MARGIN][]
        (GPU/TPU only, required on CPU).
      policies: the names to try, in order of preference.
      params: the parameters, to fail early when they alone exceed the budget.
      progress: show a progress bar (``None``: only on a terminal).

    Returns:
      The chosen policy name.

    Raises:
      TypeError: ``policies`` is not a sequence of names, or ``budget_bytes``
        is not a number.
      ValueError: ``policies`` is empty, the parameters alone exceed the
        budget, or no policy fits (the message lists what each needs).
    """
    budget = _budget(budget_bytes)
    if isinstance(policies, str) or not isinstance(policies, Sequence):
        raise TypeError(f"policies must be a sequence of names, got {policies!r}")
    if not len(policies):
        raise ValueError("policies must not be empty")
    _check_params(params, budget)
    reports = {}
    with _bar(progress, "choose_policy") as bar:
        for name in policies:
            reports[name] = _measure(build, name, "build")
            bar.set_postfix_str(f"{name}: {format_bytes(reports[name].total_bytes)}")
            bar.update(1)
    fitting = [(name, r) for name, r in reports.items() if r.total_bytes <= budget]
    if not fitting:
        needs = "; ".join(
            f"{name!r}: {r.total_bytes} bytes ({format_bytes(r.total_bytes)})"
            for name, r in reports.items()
        )
        raise ValueError(
            f"no policy fits budget_bytes={budget} ({format_bytes(budget)}): {needs}"
        )
    order = {name: i for i, name in enumerate(policies)}
    have_flops = all(r.flops is not None for _, r in fitting)

    def key(item: tuple[str, MemoryReport]) -> tuple[float, int]:
        name, r = item
        return (r.flops if have_flops else 0.0), order[name]

    return min(fitting, key=key)[0]


