"""``sparsify``: an optax wrapper that prunes during training."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrm import _checks
from jaxrm import tree as jtree
from jaxrm.prune import _leaves, _masks, _patterns, _scores
from jaxrm.prune._states import SparseTrainingState
from jaxrm.tree import aligned

__all__ = ["SparsifyState", "masks_of", "sparsify"]

_SCORES = ("magnitude", "saliency", "random")


class SparsifyState(NamedTuple):
    """State of [jaxrm.prune.sparsify][].

    Attributes:
      count: the number of updates done (int32); the schedule is read at it.
      masks: the current masks, ``bool`` arrays (``True`` = kept) at pruned
        leaves and ``None`` elsewhere.
      inner_state: the wrapped optimizer's state.
      targets: each pruned leaf's target sparsity (float32 scalars, ``None``
        elsewhere); a leaf's sparsity at step ``t`` is
        ``targets * schedule(t)``, clamped to ``[0, 1]``.
      clamped: set once a schedule value times a target fell outside
        ``[0, 1)`` or was NaN (the value was clamped; see
        [jaxrm.prune.sparsify][]).
    """

    count: jax.Array
    masks: Any
    inner_state: Any
    targets: Any = None
    clamped: Any = None


def _score_fn(score, key):
    if callable(score):
        return lambda params, grads, count: score(params, grads)
    _checks.choice(score, "score", (*_SCORES, "a callable"))
    if score == "magnitude":
        return lambda params, grads, count: _scores.magnitude(params)
    if score == "saliency":
        return lambda params, grads, count: _scores.saliency(params, grads)
    return lambda params, grads, count: _scores.random(jax.random.fold_in(key, count), params)


def _targets(p: _leaves.Plan, sparsity: Any) -> list:
    if sparsity is None:
        return [1.0] * len(p.picked)
    return [float(s) for s in _leaves.sparsities(p, sparsity)]


def sparsify(
    optimizer: optax.GradientTransformation,
    schedule: Callable[[Any], Any],
    *,
    sparsity: Any = None,
    score: str | Callable[[Any, Any], Any] = "magnitude",
    scope: str = "layer",
    where: jtree.Where = None,
    pattern: Any = None,
    stacked: Any = None,
    every: int | None = None,
    key: jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``optimizer`` so that training prunes the selected weights on a schedule.

    On each update the gradients of pruned entries are zeroed, the wrapped
    optimizer runs, and the updates are corrected so that
    ``optax.apply_updates(params, updates)`` leaves every pruned entry exactly 0.
    The masks are recomputed from the current weights (and this step's
    gradients, for ``"saliency"``) only on the first step, on steps where
    ``schedule``'s value changes, and every ``every`` steps if given; other
    steps skip the mask code entirely (``lax.cond``), so they cost about as
    much as the dense step. The masks and per-leaf targets live in the state,
    so an orbax checkpoint holds them and a resumed run continues exactly.

    Each pruned leaf has a target sparsity (as jaxpruner keeps them): with
    ``sparsity=None`` every target is 1 and ``schedule`` gives the sparsity
    itself; with a per-leaf ``sparsity`` (e.g. [jaxrm.prune.erk][] or
    ``(regex, value)`` rules) a leaf's sparsity at step ``t`` is
    ``sparsity_leaf * schedule(t)``, so ``schedule`` is a scale rising to 1
    (e.g. ``optax.linear_schedule(0.0, 1.0, 1000)``). Each stacked slice is a
    layer (see [jaxrm.tree.layouts][]). Values outside ``[0, 1)`` (which
    cannot be checked under ``jit``) are clamped, NaN to 0, and flagged in
    ``SparsifyState.clamped``.

    Args:
      optimizer: the optax transformation to wrap (e.g. ``optax.adam(1e-3)``).
      schedule: ``step -> value`` (see [jaxrm.prune.polynomial][],
        [jaxrm.prune.one_shot][], [jaxrm.prune.iterative][],
        [jaxrm.prune.constant][], or any optax-style schedule).
      sparsity: ``None``, or per-leaf target sparsities in ``[0, 1)`` (any
        per-leaf setting, see [jaxrm.tree.resolve][]).
      score: ``"magnitude"``, ``"saliency"`` (``|w * g|`` with this step's
        gradients), ``"random"``, or a callable ``(params, grads) -> scores``
        (scores ``>= 0``).
      scope: ``"layer"`` or ``"global"`` (see [jaxrm.prune.masks][]).
      where: the leaves to prune (default [jaxrm.tree.weights][]).
      pattern: ``None``, [jaxrm.prune.nm][], [jaxrm.prune.channels][] or
        [jaxrm.prune.blocks][], or a per-leaf setting of them.
      stacked: per-leaf stacked axes (see [jaxrm.tree.layouts][]).
      every: also recompute the masks every ``every`` steps (``None``: only
        when the schedule changes).
      key: PRNG key for ``score="random"`` (default ``jax.random.key(0)``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      [jaxrm.prune.SparsifyState][]; ``update(updates, state, params)``
      needs ``params``.

    Raises:
      ValueError: an unknown ``score`` or ``scope``, ``every < 1``, a
        per-leaf ``sparsity`` with ``scope="global"``; at ``init``, a
        ``where`` that selects nothing, a bad layout or a pattern that does
        not fit a leaf; at ``update``, missing ``params``.
      TypeError: ``schedule`` is not callable, or a bad ``pattern`` or
        ``every`` type.
    """
    if not callable(schedule):
        raise TypeError(f"schedule must be a callable step -> sparsity, got {schedule!r}")
    scope = _leaves.check_scope(scope)
    if sparsity is not None and scope == "global" and not _leaves.is_scalar(sparsity):
        raise ValueError("a per-leaf sparsity needs scope='layer'")
    if every is not None:
        every = _checks.positive_int(every, "every")
    key = jax.random.key(0) if key is None else key
    cfg = _Config(schedule, _score_fn(score, key), score != "random", scope, where, pattern,
                  stacked, every)
    inner = optax.with_extra_args_support(optimizer)

    def init(params):
        p = _leaves.plan(params, where, pattern=pattern, stacked=stacked)
        return SparsifyState(
            count=jnp.zeros((), jnp.int32),
            masks=p.tree([jnp.ones(x.shape, jnp.bool_) for x in p.leaves]),
            inner_state=inner.init(params),
            targets=p.tree([jnp.asarray(t, jnp.float32) for t in _targets(p, sparsity)]),
            clamped=jnp.zeros((), jnp.bool_),
        )

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(
                "sparsify needs the parameters: call update(updates, state, params)"
            )
        return _update(cfg, inner, updates, state, params, extra_args)

    return optax.GradientTransformationExtraArgs(init, update)


@dataclasses.dataclass(frozen=True)
class _Config:
    schedule: Callable[[Any], Any]
    scores_of: Callable[[Any, Any, Any], Any]
    keep_pruned_low: bool  # pruned entries rank below kept ones (all scores but random)
    scope: str
    where: Any
    pattern: Any
    stacked: Any
    every: int | None


def wanted_sparsities(level, targets: list, old: list):
    """``level * target`` of each pruned leaf, as one vector.

    A scalar per leaf was several tiny kernels per leaf for XLA to compile
    (see ``_leaves.RowCounts``); ``[]`` when nothing is pruned.
    """
    picked = [t for t, m in zip(targets, old) if m is not None]
    if not picked:
        return []
    return level * jnp.stack([jnp.asarray(t, jnp.float32).reshape(()) for t in picked])


def _fresh_masks(cfg: _Config, params, grads, count, old: list, wanted) -> list:
    """New masks, one entry per leaf of ``params`` (``None`` where not pruned).

    ``wanted`` is the pruned leaves' sparsities (a vector or a list of scalars).
    """
    p = _leaves.plan(cfg.scores_of(params, grads, count), cfg.where, pattern=cfg.pattern,
                     stacked=cfg.stacked)
    leaves = p.leaves
    if cfg.keep_pruned_low:
        # Entries pruned now rank below every kept one, so a tie at score 0 (a kept
        # weight whose gradient is 0, against a pruned weight) never revives a pruned
        # weight; with a falling schedule the revived ones are the lowest-index pruned
        # entries. (Channels and blocks rank squared norms, where a pruned entry's 0
        # is already the lowest.)
        prev = [m for m in old if m is not None]
        leaves = [
            x if isinstance(pat, _patterns.Channels | _patterns.Blocks)
            else jnp.where(m, x, -jnp.ones((), x.dtype))
            for m, x, pat in zip(prev, leaves, p.patterns)
        ]
    # The radix selection runs inside the compiled step on every backend: a host
    # callback inside a training step was measured several times slower on CPU than
    # the same callback on its own.
    # Pruned entries (-1) are most of a sparse leaf: the selection counts them apart.
    by_index = dict(zip(p.picked, _masks.compute(p, wanted, cfg.scope, host=False,
                                                 leaves=leaves, common=-1.0)))
    return [by_index.get(i) if m is not None else None for i, m in enumerate(old)]


def masked_step(inner, m_leaves: list, updates, inner_state, params, p_leaves, extra_args):
    """One step of ``inner`` on the kept entries: ``(update leaves, treedef, inner state)``.

    The gradients of pruned entries are zeroed before ``inner`` runs, and the
    updates of pruned entries are ``-p``, so ``optax.apply_updates`` leaves
    them exactly 0 (``p + (-p)`` is exactly 0).
    """
    u_leaves, treedef = jax.tree_util.tree_flatten(updates)
    masked = [g if m is None else jnp.where(m, g, jnp.zeros_like(g))
              for m, g in zip(m_leaves, u_leaves)]
    inner_updates, inner_state = inner.update(
        treedef.unflatten(masked), inner_state, params, **extra_args
    )
    final = [u if m is None else jnp.where(m, u, (-x).astype(u.dtype))
             for m, u, x in zip(m_leaves, jax.tree_util.tree_leaves(inner_updates), p_leaves)]
    return final, treedef, inner_state


def _update(cfg: _Config, inner, updates, state: SparsifyState, params, extra_args):
    fl = jtree.flatten(params)
    old = aligned(params, state.masks, "state.masks")  # the one path match per step
    structure = jax.tree_util.tree_structure(state.masks, is_leaf=lambda x: x is None)
    targets = structure.flatten_up_to(state.targets)
    count = state.count
    level = jnp.asarray(cfg.schedule(count), jnp.float32)
    before = jnp.asarray(cfg.schedule(jnp.maximum(count - 1, 0)), jnp.float32)
    refresh = (count == 0) | (level != before)
    if cfg.every is not None:
        refresh = refresh | (count % cfg.every == 0)
    wanted = wanted_sparsities(level, targets, old)
    bad = False if isinstance(wanted, list) else jnp.any(~((wanted >= 0) & (wanted < 1)))

    # The masks are settled before the inner update, so on ordinary steps the
    # masking below fuses with the optimizer's own elementwise math.
    m_leaves = jax.lax.cond(
        refresh, lambda: _fresh_masks(cfg, params, updates, count, old, wanted), lambda: old
    )
    final, treedef, inner_state = masked_step(
        inner, m_leaves, updates, state.inner_state, params, fl.leaves, extra_args
    )
    clamped = jnp.asarray(False if state.clamped is None else state.clamped) | (refresh & bad)
    return treedef.unflatten(final), SparsifyState(
        optax.safe_int32_increment(count), structure.unflatten(m_leaves), inner_state,
        state.targets, clamped,
    )


def masks_of(opt_state: Any) -> Any:
    """Returns the masks of the pruning state inside ``opt_state``.

    The state is that of [`sparsify`][jaxrm.prune.sparsify], [`ste`][jaxrm.prune.ste],
    [`rigl`][jaxrm.prune.rigl], [`set_`][jaxrm.prune.set_] or
    [`static`][jaxrm.prune.static].

    The state may be nested (``optax.chain``, ``optax.inject_hyperparams``, a
    Flax ``nnx.Optimizer``'s ``opt_state``, or the optimizer itself).

    Args:
      opt_state: an optimizer state holding one [`SparsifyState`][jaxrm.prune.SparsifyState]
        or [`SparseTrainingState`][jaxrm.prune.SparseTrainingState], or an
        object with an ``opt_state`` attribute (e.g. ``nnx.Optimizer``).

    Returns:
      The masks pytree (``bool`` arrays, ``None`` leaves), with Flax NNX
      variable wrappers removed.

    Raises:
      ValueError: no, or more than one, such state is found.
    """
    kinds = (SparsifyState, SparseTrainingState)
    if not isinstance(opt_state, kinds) and hasattr(opt_state, "opt_state"):
        opt_state = opt_state.opt_state
    found = [
        x
        for x in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, kinds))
        if isinstance(x, kinds)
    ]
    if len(found) != 1:
        raise ValueError(
            "opt_state must hold exactly one SparsifyState or SparseTrainingState (from "
            f"jaxrm.prune.sparsify, ste, rigl, set_ or static), found {len(found)}"
        )
    masks = found[0].masks
    return _unwrap_variables(masks)


def _unwrap_variables(tree: Any) -> Any:
    """Replaces Flax NNX variables (e.g. ``OptVariable``) by their values."""
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency, but stay optional
        return tree
    return jax.tree.map(
        lambda x: x.get_value() if isinstance(x, nnx.Variable) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nnx.Variable) or x is None,
    )
