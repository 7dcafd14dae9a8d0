"""Sparsity schedules: callables ``step -> sparsity``, like optax schedules.

Each accepts a Python int or an integer array (traced under ``jax.jit``) and
returns a float32 scalar array. Arguments are checked when the schedule is
made, so a bad schedule fails before training starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxrm import _checks
from jaxrm.prune import _leaves

__all__ = ["Schedule", "constant", "iterative", "one_shot", "polynomial"]

Schedule = Callable[[int | jax.Array], jax.Array]


def _step_arg(value, argument: str, minimum: int = 0) -> int:
    return _checks.integer(value, argument, minimum=minimum)


def _sparsity_arg(value, argument: str) -> float:
    return float(_leaves.check_sparsity(value, argument))


def constant(sparsity: float) -> Schedule:
    """The same sparsity at every step (prune from the first step on).

    Args:
      sparsity: a float in ``[0, 1)``.

    Returns:
      A schedule ``step -> sparsity``.

    Raises:
      ValueError: ``sparsity`` outside ``[0, 1)``.
    """
    s = _sparsity_arg(sparsity, "sparsity")

    def schedule(step):
        del step
        return jnp.asarray(s, jnp.float32)

    return schedule


def one_shot(sparsity: float, at: int) -> Schedule:
    """Dense before step ``at``, ``sparsity`` from step ``at`` on.

    Args:
      sparsity: a float in ``[0, 1)``.
      at: the step at which the model is pruned, ``>= 0``.

    Returns:
      A schedule ``step -> sparsity``.

    Raises:
      ValueError: ``sparsity`` outside ``[0, 1)`` or ``at < 0``.
      TypeError: ``at`` is not an int.
    """
    s = _sparsity_arg(sparsity, "sparsity")
    at = _step_arg(at, "at")

    def schedule(step):
        return jnp.where(jnp.asarray(step) >= at, s, 0.0).astype(jnp.float32)

    return schedule


def polynomial(
    final: float,
    begin: int,
    end: int,
    *,
    initial: float = 0.0,
    power: float = 3,
    every: int = 1,
) -> Schedule:
    """Gradual pruning (Zhu & Gupta 2017): ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^p``.

    Dense before ``begin``; from ``begin`` the sparsity rises from ``initial``
    to ``final``, changing only every ``every`` steps (``t`` is rounded down
    to ``begin + j * every``), and is ``final`` from ``end`` on.

    Args:
      final: the sparsity reached at ``end``, in ``[0, 1)``.
      begin: the first pruning step, ``>= 0``.
      end: the step at which ``final`` is reached, ``>= begin``.
      initial: the sparsity at ``begin``, in ``[0, 1)``.
      power: the exponent (3 in the paper), ``> 0``.
      every: the pruning frequency in steps, ``>= 1``.

    Returns:
      A schedule ``step -> sparsity``.

    Raises:
      ValueError: a sparsity outside ``[0, 1)``, ``begin < 0``,
        ``end < begin``, ``power <= 0`` or ``every < 1``.
      TypeError: a step argument is not an int.
    """
    s_f = _sparsity_arg(final, "final")
    s_i = _sparsity_arg(initial, "initial")
    begin = _step_arg(begin, "begin")
    end = _step_arg(end, "end")
    if end < begin:
        raise ValueError(f"end must be >= begin={begin}, got end={end}")
    every = _step_arg(every, "every", minimum=1)
    power = _checks.real(power, "power", above=0)
    span = max(end - begin, 1)

    def schedule(step):
        t = jnp.asarray(step, jnp.int32)
        t_grid = begin + ((t - begin) // every) * every
        frac = jnp.clip((t_grid - begin) / span, 0.0, 1.0).astype(jnp.float32)
        ramp = s_f + (s_i - s_f) * (1.0 - frac) ** power
        s = jnp.where(t >= end, s_f, ramp)
        return jnp.where(t < begin, 0.0, s).astype(jnp.float32)

    return schedule


def iterative(boundaries: Sequence[int], sparsities: Sequence[float]) -> Schedule:
    """Prune-retrain rounds (Han et al. 2015): ``sparsities[i]`` from ``boundaries[i]`` on.

    Dense before ``boundaries[0]``.

    Args:
      boundaries: strictly increasing steps ``>= 0`` at which a round starts.
      sparsities: the sparsity of each round, floats in ``[0, 1)``, as many as
        ``boundaries``.

    Returns:
      A schedule ``step -> sparsity``.

    Raises:
      ValueError: different lengths, empty, boundaries not strictly
        increasing or negative, or a sparsity outside ``[0, 1)``.
      TypeError: a boundary is not an int.
    """
    boundaries = list(boundaries)
    sparsities = list(sparsities)
    if not boundaries:
        raise ValueError("boundaries must not be empty")
    if len(boundaries) != len(sparsities):
        raise ValueError(
            f"boundaries and sparsities must have the same length, got "
            f"{len(boundaries)} and {len(sparsities)}"
        )
    bs = [_step_arg(b, f"boundaries[{i}]") for i, b in enumerate(boundaries)]
    if any(b1 <= b0 for b0, b1 in itertools.pairwise(bs)):
        raise ValueError(f"boundaries must be strictly increasing, got {bs}")
    ss = [_sparsity_arg(s, f"sparsities[{i}]") for i, s in enumerate(sparsities)]
    b_arr = jnp.asarray(bs, jnp.int32)
    s_arr = jnp.asarray([0.0, *ss], jnp.float32)

    def schedule(step):
        rounds = jnp.sum(jnp.asarray(step, jnp.int32) >= b_arr)
        return s_arr[rounds]

    return schedule
