"""Straight-through pruning: dense weights trained through the masked forward pass.

The optimizer keeps the weights dense. The forward pass uses
``ste_params(params, opt_state)``, the weights with the current mask applied;
its gradient is straight-through (the identity), so every dense weight,
pruned or not, receives the gradient of the masked network with respect to
it, and a pruned weight can grow back when its magnitude overtakes a kept one
(jaxpruner's ``magnitude_ste`` and ``random_ste``, which differentiate with
respect to the masked params: the same gradient).

The masks live in the state, as in [jaxrm.prune.sparsify][]: ``update``
computes the mask of the next forward pass from the new dense weights
``params + updates`` at the schedule's next value, so the state's masks
always go with the params that ``optax.apply_updates`` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrm import _checks
from jaxrm import tree as jtree
from jaxrm.prune import _leaves, _optax
from jaxrm.prune._optax import SparsifyState

__all__ = ["ste", "ste_params"]

_SCORES = ("magnitude", "random")


def ste(
    optimizer: optax.GradientTransformation,
    schedule: Callable[[Any], Any],
    *,
    sparsity: Any = None,
    score: str = "magnitude",
    scope: str = "layer",
    where: jtree.Where = None,
    pattern: Any = None,
    stacked: Any = None,
    every: int = 1,
    key: jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``optimizer`` for straight-through-estimator pruning (dense weights, masked forward).

    Use it with [jaxrm.prune.ste_params][]::

        tx = prune.ste(optax.adam(1e-3), prune.polynomial(0.9, 0, 1000))
        state = tx.init(params)
        grads = jax.grad(lambda p: loss(prune.ste_params(p, state), batch))(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)   # still dense

    The wrapped optimizer sees the full dense gradient (nothing is masked)
    and ``params`` stay dense. After each update the masks of the next
    forward pass are recomputed from ``params + updates`` at
    ``schedule(count + 1)`` (times each leaf's target, as in
    [jaxrm.prune.sparsify][]) every ``every`` steps and whenever the
    schedule's value changes; between refreshes (``lax.cond``) they are kept.
    Exactly ``round((1 - s) * n)`` entries are kept per layer (per stacked
    slice), by the exact selection of [jaxrm.prune.masks][]; pruned entries
    are not favoured, so the mask can change freely.

    Args:
      optimizer: the optax transformation to wrap.
      schedule: ``step -> sparsity`` (or a scale, with a per-leaf ``sparsity``).
      sparsity: ``None`` or per-leaf target sparsities (see [jaxrm.prune.sparsify][]).
      score: ``"magnitude"`` (jaxpruner's ``magnitude_ste``) or ``"random"``
        (``random_ste``: fresh uniform scores from ``fold_in(key, step)``).
      scope: ``"layer"`` or ``"global"``.
      where: the leaves to prune (default [jaxrm.tree.weights][]).
      pattern: ``None``, [jaxrm.prune.nm][], [jaxrm.prune.channels][],
        [jaxrm.prune.blocks][], or a per-leaf setting of them.
      stacked: per-leaf stacked axes (see [jaxrm.tree.layouts][]).
      every: the steps between mask refreshes, ``>= 1`` (1: every step, as
        jaxpruner does).
      key: PRNG key for ``score="random"`` (default ``jax.random.key(0)``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      [jaxrm.prune.SparsifyState][] holding the masks of the next forward pass.

    Raises:
      ValueError: an unknown ``score`` or ``scope``, ``every < 1``, a
        per-leaf ``sparsity`` with ``scope="global"``; at ``init``, a
        ``where`` that selects nothing; at ``update``, missing ``params``.
      TypeError: ``schedule`` is not callable, or a bad ``every`` type.
    """
    if not callable(schedule):
        raise TypeError(f"schedule must be a callable step -> sparsity, got {schedule!r}")
    _checks.choice(score, "score", _SCORES)
    scope = _leaves.check_scope(scope)
    if sparsity is not None and scope == "global" and not _leaves.is_scalar(sparsity):
        raise ValueError("a per-leaf sparsity needs scope='layer'")
    every = _checks.positive_int(every, "every")
    key = jax.random.key(0) if key is None else key
    # Scores are never lowered at pruned entries: a straight-through mask must be free
    # to bring back a dense weight that has grown.
    cfg = _optax._Config(schedule, _optax._score_fn(score, key), False, scope, where, pattern,
                         stacked, every)
    inner = optax.with_extra_args_support(optimizer)

    def masks_at(dense, grads, step, old, targets):
        level = jnp.asarray(schedule(step), jnp.float32)
        before = jnp.asarray(schedule(jnp.maximum(step - 1, 0)), jnp.float32)
        refresh = (step == 0) | (step % every == 0) | (level != before)
        wanted = _optax.wanted_sparsities(level, targets, old)
        return jax.lax.cond(
            refresh, lambda: _optax._fresh_masks(cfg, dense, grads, step, old, wanted),
            lambda: list(old),
        )

    def init(params):
        p = _leaves.plan(params, where, pattern=pattern, stacked=stacked)
        targets = [jnp.asarray(t, jnp.float32) for t in _optax._targets(p, sparsity)]
        old = p.tree([jnp.ones(x.shape, jnp.bool_) for x in p.leaves])
        old_leaves = jax.tree_util.tree_structure(old, is_leaf=lambda x: x is None)
        flat_old = old_leaves.flatten_up_to(old)
        flat_t = old_leaves.flatten_up_to(p.tree(targets))
        zero = jnp.zeros((), jnp.int32)
        m = masks_at(params, jax.tree.map(jnp.zeros_like, params), zero, flat_old, flat_t)
        return SparsifyState(zero, old_leaves.unflatten(m), inner.init(params), p.tree(targets),
                             jnp.zeros((), jnp.bool_))

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("ste needs the parameters: call update(updates, state, params)")
        old = jtree.aligned(params, state.masks, "state.masks")
        structure = jax.tree_util.tree_structure(state.masks, is_leaf=lambda x: x is None)
        targets = structure.flatten_up_to(state.targets)
        inner_updates, inner_state = inner.update(updates, state.inner_state, params,
                                                  **extra_args)
        dense = optax.apply_updates(params, inner_updates)
        step = optax.safe_int32_increment(state.count)
        m = masks_at(dense, updates, step, old, targets)
        return inner_updates, SparsifyState(step, structure.unflatten(m), inner_state,
                                            state.targets, state.clamped)

    return optax.GradientTransformationExtraArgs(init, update)


def ste_params(params: Any, opt_state: Any) -> Any:
    """The forward-pass params of [jaxrm.prune.ste][]: masked, with a straight-through gradient.

    The value is ``where(mask, w, 0)`` at each masked leaf; the gradient with
    respect to ``params`` is the identity, so ``jax.grad`` of a loss of
    ``ste_params(params, state)`` gives every dense weight the gradient of the
    masked network (the same as differentiating with respect to the masked
    params, as jaxpruner does).

    Args:
      params: the dense parameters.
      opt_state: an optimizer state holding the [jaxrm.prune.ste][] state (or
        any state [jaxrm.prune.masks_of][] reads, or an ``nnx.Optimizer``).

    Returns:
      A pytree of the params' structure.

    Raises:
      ValueError: no pruning state in ``opt_state``, or masks that do not
        match ``params``.
    """
    fl = jtree.flatten(params)
    masks = jtree.aligned(params, _optax.masks_of(opt_state), "masks")
    out = []
    for x, m in zip(fl.leaves, masks):
        if m is None:
            out.append(x)
        else:
            masked = jnp.where(m, x, jnp.zeros((), x.dtype))
            out.append(x + jax.lax.stop_gradient(masked - x))  # exact: x - x is 0
    return fl.unflatten(out)
