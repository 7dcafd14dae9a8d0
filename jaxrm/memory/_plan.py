"""A memory plan: the cheapest mix of remat, micro-batching, sharding and 8-bit state that fits."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

from jaxrm.memory._accumulate import accumulate
from jaxrm.memory._fit import _bar, _budget
from jaxrm.memory._qstate import quantized_state
from jaxrm.memory._remat import remat
from jaxrm.memory._report import format_bytes, report
from jaxrm.memory._sharding import data_sharding, fsdp, mesh

__all__ = ["Option", "Plan", "plan"]


@dataclasses.dataclass(frozen=True)
class Option:
    """One configuration of the step and what its compilation says.

    Attributes:
      policy: the remat policy on the whole loss.
      micro_batches: the batch split ([jaxrm.memory.accumulate][]).
      quantized: optimizer state in 8 bits ([jaxrm.memory.quantized_state][]).
      sharding: ``"replicated"`` or ``"fsdp"`` (parameters and state split
        over all devices, the batch over the same axis).
      total_bytes: the compiled step's peak estimate per device.
      flops: estimated FLOPs of one step: ``micro_batches`` times the
        micro-batch gradient's plus the update's (the compiler counts a loop
        body once, so the step's own figure would hide the split).
      fits: ``total_bytes <= budget``.
    """

    policy: str
    micro_batches: int
    quantized: bool
    sharding: str
    total_bytes: int
    flops: float
    fits: bool


@dataclasses.dataclass(frozen=True)
class Plan:
    """What [jaxrm.memory.plan][] found: every option, and the chosen one.

    Attributes:
      options: all options tried, in the order tried.
      best: the cheapest option that fits, or None when none fits: the
        fewest estimated FLOPs (within 1% counted equal), then the fewest
        micro-batches, float before 8-bit state, then the fewest bytes.
      budget_bytes: the budget compared against.
    """

    options: tuple[Option, ...]
    best: Option | None
    budget_bytes: float

    def __str__(self) -> str:
        head = f"{'policy':<14}{'micro':>6}{'8-bit':>7}{'sharding':>12}{'bytes/device':>15}" \
               f"{'est. GFLOP':>12}  fits"
        lines = [f"memory plan, budget {format_bytes(self.budget_bytes)} per device", head]
        for o in self.options:
            mark = "  <- chosen" if o == self.best else ""
            lines.append(
                f"{o.policy:<14}{o.micro_batches:>6}{'yes' if o.quantized else 'no':>7}"
                f"{o.sharding:>12}{format_bytes(o.total_bytes):>15}{o.flops / 1e9:>12.3f}  "
                f"{'yes' if o.fits else 'no'}{mark}"
            )
        if self.best is None:
            lines.append("no option fits")
        return "\n".join(lines)


def _abstract(tree: Any, shardings: Any = None) -> Any:
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def _flops(fn: Callable[..., Any], *args: Any) -> float:
    r = report(fn, *args, residuals=False)
    return float(r.flops or 0.0)


def plan(
    loss: Callable[..., Any],
    params: Any,
    batch: Any,
    budget_bytes: int | float | None = None,
    *,
    optimizer: optax.GradientTransformation,
    policies: Sequence[str] = ("none", "dots", "full"),
    micro_batches: Sequence[int] = (1, 2, 4),
    quantized: Sequence[bool] = (False, True),
    shardings: Sequence[str] | None = None,
    loss_for_policy: Callable[[str], Callable[..., Any]] | None = None,
    progress: bool | None = None,
) -> Plan:
    """Finds the cheapest training-step configuration that fits a memory budget.

    The step is ``grads = accumulate(value_and_grad(remat(loss, policy)), k)``
    followed by the optimizer's update (wrapped in
    [jaxrm.memory.quantized_state][] when ``quantized``), with parameters
    and optimizer state replicated or split by [jaxrm.memory.fsdp][] over
    all devices. Every combination is compiled (nothing runs, so
    ``ShapeDtypeStruct`` leaves suffice); the cheapest that fits, by
    estimated FLOPs and then bytes, is chosen. ``print(plan(...))`` prints
    the table.

    Args:
      loss: ``loss(params, batch) -> scalar``, a mean over the batch.
      params: the parameters (arrays or ``ShapeDtypeStruct``).
      batch: the full batch (leaves with a leading batch axis).
      budget_bytes: bytes per device; defaults to the device's limit less
        [jaxrm.memory.DEFAULT_MARGIN][] (required on CPU).
      optimizer: the optax optimizer of the step.
      policies: remat policy names to try on the loss.
      micro_batches: splits to try (each must divide the batch).
      quantized: whether to try float state, 8-bit state, or both.
      shardings: ``"replicated"`` and/or ``"fsdp"``; default both when
        there is more than one device, else ``("replicated",)``.
      loss_for_policy: ``policy -> loss`` for models that place the policy
        themselves, e.g. on scanned blocks with
        [jaxrm.memory.remat_modules][] (a policy on the whole loss saves
        little: its backward pass recomputes and stores every layer at
        once); ``loss`` itself is then not called.
      progress: show a progress bar (``None``: only on a terminal).

    Returns:
      A [jaxrm.memory.Plan][].

    Raises:
      TypeError: ``loss`` not callable, or option lists of the wrong type.
      ValueError: empty option lists, an unknown sharding, or a split that
        does not divide the batch.
    """
    if not callable(loss):
        raise TypeError(f"loss must be callable, got {type(loss).__name__}")
    if loss_for_policy is not None and not callable(loss_for_policy):
        raise TypeError(
            f"loss_for_policy must be callable, got {type(loss_for_policy).__name__}"
        )
    budget = _budget(budget_bytes)
    if shardings is None:
        shardings = ("replicated", "fsdp") if jax.device_count() > 1 else ("replicated",)
    for name, values in (("policies", policies), ("micro_batches", micro_batches),
                         ("quantized", quantized), ("shardings", shardings)):
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise TypeError(f"{name} must be a sequence, got {values!r}")
        if not values:
            raise ValueError(f"{name} must not be empty")
    for s in shardings:
        if s not in ("replicated", "fsdp"):
            raise ValueError(f"shardings: {s!r} is not 'replicated' or 'fsdp'")
    sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
    for k in micro_batches:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"micro_batches must hold ints, got {k!r}")
        if k < 1 or any(n % k for n in sizes):
            raise ValueError(f"micro_batches={k} does not divide the batch sizes {sorted(sizes)}")

    abstract_params, abstract_batch = _abstract(params), _abstract(batch)
    grad_flops: dict[tuple[str, int], float] = {}
    update_flops: dict[bool, float] = {}
    options = []
    combos = list(itertools.product(policies, micro_batches, quantized, shardings))
    with _bar(progress, "plan") as bar:
        for policy, k, q, sharding in combos:
            tx = quantized_state(optimizer) if q else optimizer
            policy_loss = remat(loss, policy) if loss_for_policy is None else \
                loss_for_policy(policy)
            grad = jax.value_and_grad(policy_loss)
            grad_k = grad if k == 1 else accumulate(grad, k)

            def step(p, s, b, grad_k=grad_k, tx=tx):
                value, g = grad_k(p, b)
                updates, s = tx.update(g, s, p)
                return optax.apply_updates(p, updates), s, value

            state = jax.eval_shape(tx.init, abstract_params)
            if sharding == "fsdp":
                m = mesh(fsdp=-1)
                args = (_abstract(abstract_params, fsdp(abstract_params, m)),
                        _abstract(state, fsdp(state, m)),
                        _abstract(abstract_batch, jax.tree.map(
                            lambda _, m=m: data_sharding(m), abstract_batch)))
            else:
                args = (abstract_params, state, abstract_batch)
            total = report(step, *args, residuals=False).total_bytes
            if (policy, k) not in grad_flops:
                micro = jax.tree.map(
                    lambda x, k=k: jax.ShapeDtypeStruct((x.shape[0] // k, *x.shape[1:]), x.dtype),
                    abstract_batch)
                grad_flops[policy, k] = _flops(grad, abstract_params, micro)
            if q not in update_flops:
                grads = abstract_params
                update_flops[q] = _flops(lambda g, s, p, tx=tx: tx.update(g, s, p),
                                         grads, state, abstract_params)
            flops = k * grad_flops[policy, k] + update_flops[q]
            if sharding == "fsdp":
                flops /= jax.device_count()
            options.append(Option(policy, k, q, sharding, total, flops, total <= budget))
            bar.set_postfix_str(f"{policy}/{k}/{'8bit' if q else 'f32'}/{sharding}: "
                                f"{format_bytes(total)}")
            bar.update(1)
    return Plan(tuple(options), _cheapest([o for o in options if o.fits]), budget)


def _cheapest(fitting: list[Option]) -> Option | None:
    # FLOPs within 1% count as equal (k micro-batches of B/k cost about what one batch of B
    # does); among those, fewer micro-batches (each adds a loop step and smaller matmuls),
    # float state (no coding work), then fewer bytes.
    if not fitting:
        return None
    least = min(o.flops for o in fitting)
    close = [o for o in fitting if o.flops <= least * 1.01]
    return min(close, key=lambda o: (o.micro_batches, o.quantized, o.total_bytes))
