"""Memory reports read from the compiled executable, and device budgets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax

from jaxrm.memory._remat import residual_bytes as _residual_bytes
from jaxrm.tree import nbytes

__all__ = ["MemoryReport", "device_budget", "format_bytes", "report"]


def format_bytes(n: int | float | None) -> str:
    """Formats a byte count with a binary unit (``"1.50 MiB"``); ``"-"`` for None."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Device memory of one compiled function, per device.

    All sizes are bytes on one device (for a sharded computation, each
    device's share), as the compiler's buffer assignment reports them.

    Attributes:
      argument_bytes: the inputs.
      output_bytes: the outputs.
      temp_bytes: temporaries the executable allocates (activations, residuals
        kept for a backward pass inside the function, workspace).
      alias_bytes: outputs that reuse a donated input buffer (counted once).
      code_bytes: the generated code.
      total_bytes: the peak estimate ``argument + output + temp - alias + code``.
      peak_bytes: the compiler's own peak figure when it reports one, else None.
      host_bytes: bytes in host memory (arguments, outputs and temporaries
        placed in pinned host memory, e.g. by the ``"offload_dots"`` policy);
        not part of ``total_bytes``.
      residual_bytes: bytes a backward pass of ``loss`` (or of the function)
        saves, arguments excluded (see [`residual_bytes`][jaxrm.memory.residual_bytes]); None when
        not
        asked for or the function cannot be differentiated.
      flops: the compiler's FLOP estimate (``cost_analysis()``), or None. Loop
        bodies (``lax.scan``) are counted once, not once per iteration.
      params_bytes: bytes of the ``params`` given to [`report`][jaxrm.memory.report], or None.
      grads_bytes: bytes of gradients of floating ``params`` (their size), or None.
      opt_state_bytes: bytes of the ``opt_state`` given, or None.
      platform: the backend the function was compiled for.
    """

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    code_bytes: int
    total_bytes: int
    peak_bytes: int | None = None
    host_bytes: int = 0
    residual_bytes: int | None = None
    flops: float | None = None
    params_bytes: int | None = None
    grads_bytes: int | None = None
    opt_state_bytes: int | None = None
    platform: str = "cpu"

    def fits(self, budget_bytes: int) -> bool:
        """True when the peak estimate ``total_bytes`` is at most ``budget_bytes``."""
        return self.total_bytes <= budget_bytes

    def rows(self) -> list[tuple[str, int | float | None]]:
        """Returns ``[(label, bytes), ...]`` in the order the table prints them."""
        rows = [
            ("arguments", self.argument_bytes),
            ("outputs", self.output_bytes),
            ("temporaries", self.temp_bytes),
            ("aliased (donated)", -self.alias_bytes),
            ("generated code", self.code_bytes),
            ("total (peak estimate)", self.total_bytes),
        ]
        if self.peak_bytes is not None:
            rows.append(("compiler peak", self.peak_bytes))
        if self.host_bytes:
            rows.append(("host memory (offloaded)", self.host_bytes))
        for label, value in (
            ("residuals for backward", self.residual_bytes),
            ("parameters", self.params_bytes),
            ("gradients", self.grads_bytes),
            ("optimizer state", self.opt_state_bytes),
        ):
            if value is not None:
                rows.append((label, value))
        return rows

    def __str__(self) -> str:
        rows = [(label, f"{v:,}", format_bytes(v)) for label, v in self.rows()]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"memory per device ({self.platform})"]
        lines += [f"  {a:<{w0}}  {b:>{w1}} B  {c:>11}" for a, b, c in rows]
        if self.flops is not None:
            lines.append(f"  {'flops (estimate)':<{w0}}  {self.flops:,.0f}")
        return "\n".join(lines)


def _stat(stats: Any, name: str) -> int:
    value = getattr(stats, name, 0)
    return int(value or 0)


def _flops(compiled: Any) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def compiled_report(compiled: Any, **extra: Any) -> MemoryReport:
    """Builds a [`MemoryReport`][jaxrm.memory.MemoryReport] from a ``jax.stages.Compiled``."""
    stats = compiled.memory_analysis()
    if isinstance(stats, list | tuple):  # one entry per device on some versions
        stats = max(stats, key=lambda s: _stat(s, "temp_size_in_bytes"))
    if stats is None:
        raise ValueError("the backend reports no memory analysis for this executable")
    arg = _stat(stats, "argument_size_in_bytes")
    out = _stat(stats, "output_size_in_bytes")
    temp = _stat(stats, "temp_size_in_bytes")
    alias = _stat(stats, "alias_size_in_bytes")
    code = _stat(stats, "generated_code_size_in_bytes")
    peak = _stat(stats, "peak_memory_in_bytes") or None
    host = (
        _stat(stats, "host_argument_size_in_bytes")
        + _stat(stats, "host_output_size_in_bytes")
        + _stat(stats, "host_temp_size_in_bytes")
        - _stat(stats, "host_alias_size_in_bytes")
    )
    platform = "unknown"
    try:
        platform = next(iter(compiled.input_shardings[0][0].device_set)).platform
    except Exception:  # no inputs: fall back to the default backend
        platform = jax.default_backend()
    return MemoryReport(
        argument_bytes=arg,
        output_bytes=out,
        temp_bytes=temp,
        alias_bytes=alias,
        code_bytes=code,
        total_bytes=arg + out + temp - alias + code,
        peak_bytes=peak,
        host_bytes=host,
        flops=_flops(compiled),
        platform=platform,
        **extra,
    )


def _float_bytes(tree: Any) -> int:
    leaves = [
        x
        for x in jax.tree_util.tree_leaves(tree)
        if hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)
    ]
    return nbytes(leaves)


def report(
    fn: Callable[..., Any],
    *args: Any,
    loss: Callable[..., Any] | None = None,
    loss_args: Sequence[Any] | None = None,
    residuals: bool = True,
    params: Any = None,
    opt_state: Any = None,
) -> MemoryReport:
    """Compiles ``fn(*args)`` and reads its memory from the executable.

    Nothing runs and nothing is allocated: ``args`` may be
    ``jax.ShapeDtypeStruct`` pytrees (with ``sharding=`` for a sharded
    computation). A ``jax.jit``-wrapped ``fn`` is lowered as it is, so its
    ``in_shardings``, ``out_shardings`` and ``donate_argnums`` count.

    On CPU the compiler does not schedule for memory across unrolled layers:
    a remat policy shows in ``temp_bytes`` only for layers inside ``lax.scan``;
    ``residual_bytes`` shows it everywhere.

    Args:
      fn: the function to measure, typically a whole training step.
      *args: its arguments (arrays or ``jax.ShapeDtypeStruct`` pytrees).
      loss: the function whose backward-pass residuals ``residual_bytes``
        counts; give it when ``fn`` is a training step (the residuals of the
        step itself would be those of a second derivative). Defaults to ``fn``.
      loss_args: the arguments of ``loss`` (default: ``args``), e.g.
        ``(params, batch)`` for a step taking ``(params, opt_state, batch)``.
      residuals: count residual bytes (one extra trace). If ``False``, or if
        no ``loss`` is given and ``fn`` cannot be differentiated,
        ``residual_bytes`` is None.
      params: the parameters, to fill ``params_bytes`` and ``grads_bytes``.
      opt_state: the optimizer state, to fill ``opt_state_bytes``.

    Returns:
      A [`MemoryReport`][jaxrm.memory.MemoryReport]; ``print(report(...))`` prints a table.

    Raises:
      TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    compiled = jitted.lower(*args).compile()
    res = None
    if residuals and loss is not None:
        if not callable(loss):
            raise TypeError(f"loss must be callable, got {type(loss).__name__}")
        res = _residual_bytes(loss, *(args if loss_args is None else tuple(loss_args)))
    elif residuals:
        try:
            res = _residual_bytes(fn, *args)
        except (TypeError, ValueError, NotImplementedError):
            res = None  # not differentiable (integer outputs, custom calls, ...)
    return compiled_report(
        compiled,
        residual_bytes=res,
        params_bytes=None if params is None else nbytes(params),
        grads_bytes=None if params is None else _float_bytes(params),
        opt_state_bytes=None if opt_state is None else nbytes(opt_state),
    )


def device_budget(device: Any = None) -> int:
    """Returns a device's memory limit, ``memory_stats()["bytes_limit"]``.

    Args:
      device: a ``jax.Device``; defaults to ``jax.devices()[0]``.

    Returns:
      The limit in bytes.

    Raises:
      ValueError: the backend reports no limit (CPU): pass ``budget_bytes``
        explicitly there.
    """
    device = jax.devices()[0] if device is None else device
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # not implemented on this backend
        stats = None
    if not stats or "bytes_limit" not in stats:
        raise ValueError(
            f"budget_bytes must be given explicitly: the {device.platform} device {device} "
            "reports no memory limit (memory_stats()['bytes_limit'] exists on GPU and TPU only)"
        )
    return int(stats["bytes_limit"])
