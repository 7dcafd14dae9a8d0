"""A training step that splits its batch into micro-batches instead of dying of OOM."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax

from jaxrm.memory._accumulate import accumulate
from jaxrm.memory._remat import _signature
from jaxrm.memory._report import compiled_report, format_bytes

__all__ = ["OOMGuard", "oom_guard"]

_log = logging.getLogger("jaxrm.memory")

_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


class _OverBudget(Exception):
    """The compiled step needs more than the simulated device limit."""


def is_oom(error: BaseException) -> bool:
    """True for an out-of-memory error from XLA (at compile or run time)."""
    return isinstance(error, _OverBudget | MemoryError) or any(
        m in str(error) for m in _OOM_MARKERS
    )


class OOMGuard:
    """A jitted training step that halves its micro-batch on out-of-memory.

    Call it like the step. Attributes: ``micro_batches`` (the split in use,
    remembered across calls), ``history`` (``(micro_batches, reason)`` for
    every split that failed). Build with [jaxrm.memory.oom_guard][].
    """

    def __init__(self, make_step, grad_fn, batch_argnums, reduce, budget_bytes, max_micro_batches):
        self._make_step = make_step
        self._grad_fn = grad_fn
        self._batch_argnums = batch_argnums
        self._reduce = reduce
        self._budget = budget_bytes
        self._max = max_micro_batches
        self._compiled: dict[tuple[int, Any], Any] = {}
        self.micro_batches = 1
        self.history: list[tuple[int, str]] = []

    def _executable(self, k: int, args: tuple[Any, ...]) -> Any:
        key = (k, _signature(args, {}))
        if key[1] is not None and key in self._compiled:
            return self._compiled[key]
        grad = self._grad_fn if k == 1 else accumulate(
            self._grad_fn, k, batch_argnums=self._batch_argnums, reduce=self._reduce
        )
        compiled = jax.jit(self._make_step(grad)).lower(*args).compile()
        if self._budget is not None:
            total = compiled_report(compiled).total_bytes
            if total > self._budget:
                raise _OverBudget(
                    f"RESOURCE_EXHAUSTED (simulated): {total} bytes ({format_bytes(total)}) "
                    f"needed, budget_bytes={self._budget} ({format_bytes(self._budget)})"
                )
        if key[1] is not None:
            self._compiled[key] = compiled
        return compiled

    def __call__(self, *args: Any) -> Any:
        k = self.micro_batches
        first: BaseException | None = None
        while True:
            try:
                out = self._executable(k, args)(*args)
                jax.block_until_ready(out)  # a run-time OOM surfaces here, not later
                self.micro_batches = k
                return out
            except ValueError as e:
                if first is None or "not divisible" not in str(e):
                    raise
                raise RuntimeError(
                    f"the step does not fit, and its batch does not split into {k} "
                    f"micro-batches ({e}); first error: {first}"
                ) from first
            except Exception as e:  # XLA raises its own runtime error type
                if not is_oom(e):
                    raise
                first = first or e
                self.history.append((k, str(e).splitlines()[0][:200]))
                if self._max is not None and 2 * k > self._max:
                    raise RuntimeError(
                        f"the step does not fit even in {k} micro-batches "
                        f"(max_micro_batches={self._max}): {first}"
                    ) from e
                _log.warning("step out of memory with %d micro-batch(es); trying %d", k, 2 * k)
                k *= 2


def oom_guard(
    make_step: Callable[[Callable[..., Any]], Callable[..., Any]],
    grad_fn: Callable[..., Any],
    *,
    batch_argnums: int | Sequence[int] = 1,
    reduce: str = "mean",
    budget_bytes: int | float | None = None,
    max_micro_batches: int | None = None,
) -> OOMGuard:
    """Makes a training step that adapts to device memory instead of failing.

    ``make_step(grad)`` builds the step from a gradient function with
    ``grad_fn``'s signature (for a split ``k``, ``grad`` is
    ``accumulate(grad_fn, k, batch_argnums=..., reduce=...)``). The guard
    jit-compiles ``make_step(grad_fn)``; when compiling or running it raises
    ``RESOURCE_EXHAUSTED`` it doubles the number of micro-batches and tries
    again, keeps the split that worked for the next calls, and returns what
    the step returns: for a loss that is a mean over examples, the same
    result up to float round-off (micro-batch means averaged in float32).

    Args:
      make_step: ``grad -> step``, e.g. ``lambda grad: lambda p, s, b:
        update(p, s, grad(p, b))``.
      grad_fn: e.g. ``jax.value_and_grad(loss)``, taking the batch at
        ``batch_argnums``.
      batch_argnums: positions of the batch in ``grad_fn``'s arguments.
      reduce: ``"mean"`` or ``"sum"``, as in [jaxrm.memory.accumulate][].
      budget_bytes: a simulated device limit: a compiled step whose
        [jaxrm.memory.MemoryReport][] ``total_bytes`` exceeds it counts as out
        of memory (for tests and for leaving room); ``None``: only real errors.
      max_micro_batches: the largest split to try (default: until the batch
        no longer divides).

    Returns:
      An [jaxrm.memory.OOMGuard][], called like the step.

    Raises:
      TypeError: ``make_step`` or ``grad_fn`` is not callable.
      ValueError: a bad ``budget_bytes`` or ``max_micro_batches``. When
        called, ``RuntimeError`` if no split fits.
    """
    for name, f in (("make_step", make_step), ("grad_fn", grad_fn)):
        if not callable(f):
            raise TypeError(f"{name} must be callable, got {type(f).__name__}")
    if budget_bytes is not None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int | float):
            raise TypeError(f"budget_bytes must be a number, got {type(budget_bytes).__name__}")
        if not budget_bytes > 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
    if max_micro_batches is not None:
        if isinstance(max_micro_batches, bool) or not isinstance(max_micro_batches, int):
            raise TypeError(f"max_micro_batches must be an int, got {max_micro_batches!r}")
        if max_micro_batches < 1:
            raise ValueError(f"max_micro_batches must be positive, got {max_micro_batches}")
    accumulate(grad_fn, 1, batch_argnums=batch_argnums, reduce=reduce)  # checks the options
    return OOMGuard(make_step, grad_fn, batch_argnums, reduce, budget_bytes, max_micro_batches)
