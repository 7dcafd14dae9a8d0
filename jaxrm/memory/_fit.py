"""Fitting a batch size or a remat policy to a memory budget, by compiling only."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from jaxrm.memory._report import MemoryReport, device_budget, format_bytes, report
from jaxrm.tree import nbytes

__all__ = ["choose_policy", "fit_batch"]

Build = Callable[[Any], tuple[Callable[..., Any], Sequence[Any]]]


def _budget(budget_bytes: int | None) -> int:
    if budget_bytes is None:
        return device_budget()
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int | float):
        raise TypeError(
            f"budget_bytes must be a number of bytes, got {type(budget_bytes).__name__}"
        )
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
    return int(budget_bytes)


def _measure(build: Build, x: Any, argument: str) -> MemoryReport:
    built = build(x)
    if not (isinstance(built, tuple | list) and len(built) == 2 and callable(built[0])):
        raise TypeError(f"{argument}({x!r}) must return (fn, args), got {type(built).__name__}")
    fn, args = built
    return report(fn, *tuple(args), residuals=False)


def _check_params(params: Any, budget: int) -> None:
    if params is not None and nbytes(params) >= budget:
        raise ValueError(
            f"budget_bytes={budget} ({format_bytes(budget)}) is smaller than the parameters "
            f"alone ({nbytes(params)} bytes, {format_bytes(nbytes(params))}); shard them "
            "(memory.fsdp) or give a larger budget"
        )


def fit_batch(
    build: Build,
    budget_bytes: int | None = None,
    *,
    start: int = 1,
    limit: int = 1 << 20,
    multiple_of: int = 1,
    params: Any = None,
) -> int:
    """Returns the largest batch size whose compiled step fits ``budget_bytes``.

    Doubles the batch from ``start`` until the report of ``build(batch)`` no
    longer fits, then bisects between the last fit and the first miss. Only
    compiles (``jax.ShapeDtypeStruct`` arguments suffice): nothing runs out of
    memory to find out. Memory is assumed to grow with the batch size (some
    compilers special-case batch 1; pass ``start=2`` or more if its report
    looks out of line).

    Args:
      build: ``build(batch_size) -> (fn, args)``, the step to measure.
      budget_bytes: bytes per device; defaults to the device's
        ``memory_stats()["bytes_limit"]`` (GPU/TPU only, required on CPU).
      start: the smallest batch size to try (a multiple of ``multiple_of``).
      limit: the largest batch size to try.
      multiple_of: only batch sizes divisible by this are tried (e.g. the
        number of data-parallel devices or micro-batches).
      params: the parameters, to fail early when they alone exceed the budget.

    Returns:
      The batch size: ``report(*build(b)).total_bytes <= budget_bytes``, and
      the next multiple of ``multiple_of`` does not fit or exceeds ``limit``.

    Raises:
      ValueError: a bad ``start``/``limit``/``multiple_of``/``budget_bytes``;
        the parameters alone exceed the budget; or even ``start`` does not fit
        (the message gives what it needs).
      TypeError: ``build`` does not return ``(fn, args)``.
    """
    budget = _budget(budget_bytes)
    for name, value in (("start", start), ("limit", limit), ("multiple_of", multiple_of)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if start % multiple_of:
        raise ValueError(f"start={start} is not a multiple of multiple_of={multiple_of}")
    if limit < start:
        raise ValueError(f"limit={limit} is smaller than start={start}")
    _check_params(params, budget)

    @functools.cache
    def total(b: int) -> int:
        return _measure(build, b, "build").total_bytes

    first = total(start)
    if first > budget:
        r = _measure(build, start, "build")
        raise ValueError(
            f"even batch size start={start} needs {first} bytes ({format_bytes(first)}) "
            f"per device, more than budget_bytes={budget} ({format_bytes(budget)}); its "
            f"arguments alone take {r.argument_bytes} bytes. Use remat, sharding or "
            "gradient accumulation (memory.accumulate)"
        )
    # Work in units of multiple_of.
    lo, top = start // multiple_of, limit // multiple_of
    hi = None  # smallest known unit count that does not fit
    while hi is None:
        nxt = min(lo * 2, top)
        if nxt == lo:
            return lo * multiple_of
        if total(nxt * multiple_of) <= budget:
            lo = nxt
        else:
            hi = nxt
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if total(mid * multiple_of) <= budget:
            lo = mid
        else:
            hi = mid
    return lo * multiple_of


def choose_policy(
    build: Build,
    budget_bytes: int | None = None,
    *,
    policies: Sequence[str] = ("none", "dots", "dots_no_batch", "full"),
    params: Any = None,
) -> str:
    """Returns the remat policy that fits the budget with the least recomputation.

    Each ``build(policy)`` is compiled; among the policies whose peak estimate
    fits, the one with the fewest FLOPs (``cost_analysis()``) wins, ties going
    to the earlier in ``policies``.

    Args:
      build: ``build(policy_name) -> (fn, args)``, the step under that policy
        (e.g. using [`remat`][jaxrm.memory.remat]).
      budget_bytes: bytes per device; defaults to the device's
        ``memory_stats()["bytes_limit"]`` (GPU/TPU only, required on CPU).
      policies: the names to try, in order of preference.
      params: the parameters, to fail early when they alone exceed the budget.

    Returns:
      The chosen policy name.

    Raises:
      ValueError: ``policies`` is empty, the parameters alone exceed the
        budget, or no policy fits (the message lists what each needs).
    """
    budget = _budget(budget_bytes)
    if isinstance(policies, str) or not len(policies):
        raise ValueError(f"policies must be a non-empty sequence of names, got {policies!r}")
    _check_params(params, budget)
    reports = {name: _measure(build, name, "build") for name in policies}
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


