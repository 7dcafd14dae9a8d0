"""Sparse training from scratch: RigL, SET and static sparse, as optax wrappers.

All three start from a random mask with a fixed per-leaf sparsity (ERK or
uniform) and keep it exact at every step. RigL and SET change the mask every
``every`` steps until ``end_step``: on such a step each sparse leaf (each
stacked slice) drops the ``k`` active weights of smallest magnitude and grows
``k`` inactive ones, with

    k = n_active - round((1 - f(t)) * n_active),   capped at n - n_active,

where ``f(t)`` is the drop fraction at step ``t`` (by default the paper's
cosine decay ``f(t) = f0 / 2 * (1 + cos(pi * t / end_step))``) and the
rounding is half to even on the float32 value of ``f(t)`` (the kept count of
[jaxrm.prune.masks][]). ``k`` equals ``round(f(t) * n_active)`` except at an
exact half, where it is jaxpruner's count (jaxpruner keeps
``round(n_active * (1 - f))`` after the drop). RigL grows the inactive
connections of largest ``|gradient|``, SET grows uniformly at random among
them; a connection dropped in this update is never regrown in it. Grown
weights start at 0 and their optimizer moments are reset (see
``_moments.py``); as in the reference RigL code and jaxpruner, the weights
take no gradient step on a mask-update step (only the mask changes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrm import _checks
from jaxrm import tree as jtree
from jaxrm.prune import _distributions, _leaves, _masks, _moments, _optax, _select
from jaxrm.prune._states import SparseTrainingState

__all__ = ["rigl", "set_", "static"]

_INITS = ("erk", "uniform")


@dataclasses.dataclass(frozen=True)
class _Config:
    sparsity: Any
    init: str
    key: jax.Array
    where: Any
    stacked: Any
    grow: str | None  # "gradient" (RigL), "random" (SET) or None (static)
    fraction: Callable[[Any], Any] | None = None
    every: int = 1
    end_step: int = 0


def _plan(cfg: _Config, params) -> _leaves.Plan:
    return _leaves.plan(params, cfg.where, stacked=cfg.stacked)


def _targets(cfg: _Config, params, p: _leaves.Plan) -> list[float]:
    """Each sparse leaf's fixed sparsity: ``sparsity`` spread by ``init``, or as given."""
    if not _leaves.is_scalar(cfg.sparsity):
        return [float(s) for s in _leaves.sparsities(p, cfg.sparsity)]
    s = float(_leaves.check_sparsity(cfg.sparsity))
    if cfg.init == "uniform":
        return [s] * len(p.picked)
    spread = _distributions.erk(params, s, where=cfg.where, stacked=cfg.stacked)
    return [float(v) for v in _leaves.sparsities(p, spread)]


def _active_counts(cfg: _Config, params, p: _leaves.Plan) -> tuple[list[int], list[int]]:
    """Per sparse leaf: the entries of one slice, and how many of them are active."""
    sizes = [math.prod(lay.slice_shape) for lay in p.layouts]
    return sizes, _leaves.kept_counts(_targets(cfg, params, p), sizes)


def _init_masks(cfg: _Config, params) -> Any:
    """A uniformly random mask with each leaf's (slice's) exact active count."""
    p = _plan(cfg, params)
    scores = [jax.random.uniform(jax.random.fold_in(cfg.key, i), x.shape, jnp.float32)
              for i, x in zip(p.picked, p.leaves)]
    return p.tree(_masks.compute(p, _targets(cfg, params, p), "layer", leaves=scores))


def _grow_scores(cfg: _Config, p: _leaves.Plan, grads: list, count, state_key) -> list:
    if cfg.grow == "gradient":
        # The gradient passed to update is that of the masked network w.r.t. every
        # weight (pruned weights are exactly 0 in the forward pass); NaN ranks as 0.
        return [jnp.nan_to_num(jnp.abs(g.astype(jnp.float32)), nan=0.0) for g in grads]
    key = jax.random.fold_in(state_key, count)
    return [jax.random.uniform(jax.random.fold_in(key, i), g.shape, jnp.float32)
            for i, g in zip(p.picked, grads)]


def _drop_and_grow(cfg: _Config, inner_state, updates, params, old: list, count, key):
    """The mask-update step: ``(update leaves, mask leaves, inner state)``."""
    fl = jtree.flatten(params)
    p = _plan(cfg, params)
    g_leaves, _ = jax.tree_util.tree_flatten(updates)
    sizes, active = _active_counts(cfg, params, p)
    assert cfg.fraction is not None  # only rigl / set_ (which set it) update masks
    frac = jnp.asarray(cfg.fraction(count), jnp.float32)
    kept = _leaves.kept_counts([frac] * len(p.picked), active)
    drops = [jnp.clip(a - jnp.asarray(k), 0, n - a) for a, k, n in zip(active, kept, sizes)]

    rows_m, drop_rows, grow_rows, survive_k, grow_k = [], [], [], [], []
    grow = _grow_scores(cfg, p, [g_leaves[i] for i in p.picked], count, key)
    minus_one = jnp.float32(-1.0)
    for i, lay, a, k, gs in zip(p.picked, p.layouts, active, drops, grow):
        m = lay.to_slices(old[i]).reshape(lay.n_slices, -1)
        w = lay.to_slices(jnp.abs(fl.leaves[i].astype(jnp.float32))).reshape(lay.n_slices, -1)
        rows_m.append(m)
        # Inactive entries rank below every active one (|w| >= 0), so the drop
        # keeps the largest active weights; for the growth every entry active
        # before this update ranks below every inactive one, so a connection
        # just dropped is never grown back.
        drop_rows.append(jnp.where(m, w, minus_one))
        grow_rows.append(jnp.where(m, minus_one, lay.to_slices(gs).reshape(lay.n_slices, -1)))
        survive_k.append(jnp.full((lay.n_slices,), a - k, jnp.int32))
        grow_k.append(jnp.full((lay.n_slices,), k, jnp.int32))
    survivors = _select.select(drop_rows, survive_k, "layer", host=False)
    grown = _select.select(grow_rows, grow_k, "layer", host=False)

    u_out = [jnp.zeros_like(g) for g in g_leaves]
    m_out, g_out = list(old), [None] * len(fl.leaves)
    for j, (i, lay) in enumerate(zip(p.picked, p.layouts)):
        shape = (lay.n_slices, *lay.slice_shape)
        keep = lay.from_slices(survivors[j].reshape(shape))
        new = lay.from_slices(grown[j].reshape(shape))
        m_out[i] = keep | new
        g_out[i] = new
        # Dropped and grown weights (and inactive ones) become exactly 0: p + (-p).
        u_out[i] = jnp.where(keep, jnp.zeros((), g_leaves[i].dtype),
                             (-fl.leaves[i]).astype(g_leaves[i].dtype))
    shapes = [jnp.shape(x) for x in fl.leaves]
    inner_state = _moments.reset(inner_state, fl.treedef, shapes, g_out)
    return u_out, m_out, inner_state


def _wrap(cfg: _Config, optimizer) -> optax.GradientTransformationExtraArgs:
    inner = optax.with_extra_args_support(optimizer)

    def init(params):
        return SparseTrainingState(
            count=jnp.zeros((), jnp.int32),
            masks=_init_masks(cfg, params),
            inner_state=inner.init(params),
            key=jax.random.key_data(cfg.key),
        )

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("this optimizer needs the parameters: call "
                             "update(updates, state, params)")
        fl = jtree.flatten(params)
        old = jtree.aligned(params, state.masks, "state.masks")
        structure = jax.tree_util.tree_structure(state.masks, is_leaf=lambda x: x is None)
        count = state.count

        def regular():
            final, _, inner_state = _optax.masked_step(
                inner, old, updates, state.inner_state, params, fl.leaves, extra_args
            )
            return final, list(old), inner_state

        if cfg.grow is None:
            final, m_leaves, inner_state = regular()
        else:
            def mask_update():
                key = jax.random.wrap_key_data(state.key, impl=jax.random.key_impl(cfg.key))
                return _drop_and_grow(cfg, state.inner_state, updates, params, old, count, key)

            is_update = (count % cfg.every == 0) & (count < cfg.end_step)
            final, m_leaves, inner_state = jax.lax.cond(is_update, mask_update, regular)
        treedef = jax.tree_util.tree_structure(updates)
        return treedef.unflatten(final), SparseTrainingState(
            optax.safe_int32_increment(count), structure.unflatten(m_leaves), inner_state,
            state.key,
        )

    return optax.GradientTransformationExtraArgs(init, update)


def _config(sparsity, init, key, where, stacked, grow=None, drop_fraction=None,
            schedule=None, every=1, end_step=0) -> _Config:
    if sparsity is None:
        raise TypeError("sparsity must be a float in [0, 1) or a per-leaf setting, got None")
    if _leaves.is_scalar(sparsity):
        _leaves.check_sparsity(sparsity)
    _checks.choice(init, "init", _INITS)
    key = _checks.prng_key(key)
    fraction = None
    if grow is not None:
        drop_fraction = _checks.real(drop_fraction, "drop_fraction", above=0, maximum=1)
        every = _checks.positive_int(every, "every")
        end_step = _checks.integer(end_step, "end_step", minimum=0)
        if schedule is None:
            fraction = optax.cosine_decay_schedule(drop_fraction, max(end_step, 1))
        elif callable(schedule):
            fraction = schedule
        else:
            raise TypeError(f"schedule must be a callable step -> drop fraction, got {schedule!r}")
    return _Config(sparsity, init, key, where, stacked, grow, fraction, every, end_step)


def rigl(
    optimizer: optax.GradientTransformation,
    sparsity: Any,
    *,
    end_step: int,
    key: jax.Array,
    drop_fraction: float = 0.3,
    schedule: Callable[[Any], Any] | None = None,
    every: int = 100,
    init: str = "erk",
    where: jtree.Where = None,
    stacked: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """RigL (Evci et al. 2020): drop the smallest weights, grow where ``|gradient|`` is largest.

    Every ``every`` steps until ``end_step`` each sparse leaf (each stacked
    slice) drops its ``k`` active weights of smallest magnitude and grows the
    ``k`` inactive connections of largest gradient magnitude, with
    ``k = n_active - round((1 - f(t)) * n_active)`` (see the module notes; the
    sparsity stays exact). The gradient RigL ranks is the one passed to
    ``update``: since pruned weights are exactly 0, the gradient of the loss
    at the params is the gradient of the masked network with respect to all
    weights, as in the paper. It is read only on mask-update steps: the growth
    code sits in the true branch of a ``lax.cond``, so other steps cost what a
    [jaxrm.prune.sparsify][] step does. Grown weights start at 0 with zeroed
    optimizer moments; on a mask-update step the weights take no gradient step.

    Right after ``init`` the masks are random and the params still dense: use
    ``prune.apply(params, prune.masks_of(state))`` for the first forward pass
    (the first update zeroes the inactive weights anyway).

    Args:
      optimizer: the optax transformation to wrap (e.g. ``optax.adam(1e-3)``).
      sparsity: the overall sparsity of the selected leaves, a float in
        ``[0, 1)`` spread over them by ``init``; or per-leaf sparsities (any
        per-leaf setting, see [jaxrm.tree.resolve][], e.g. from
        [jaxrm.prune.erk][]), used as given.
      init: ``"erk"`` ([jaxrm.prune.erk][], the papers' choice) or
        ``"uniform"`` (the same sparsity for every leaf).
      key: the PRNG key of the random initial mask (and of SET's growth).
      where: the sparse leaves (default [jaxrm.tree.weights][]).
      stacked: per-leaf stacked axes (see [jaxrm.tree.layouts][]); each slice
        is a layer with its own exact count.
      drop_fraction: the initial drop fraction ``f0`` in ``(0, 1]`` (0.3 in both papers).
      schedule: ``step -> drop fraction``; default the cosine decay
        ``f0 / 2 * (1 + cos(pi * t / end_step))`` (Evci et al. 2020).
      every: the steps between mask updates ``>= 1`` (RigL's ``delta T``, 100).
      end_step: mask updates happen at steps ``t % every == 0`` with
        ``t < end_step`` (RigL's ``T_end``, 75% of training in the paper).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      [jaxrm.prune.SparseTrainingState][]; ``update`` needs ``params``.

    Raises:
      ValueError: ``drop_fraction`` outside ``(0, 1]``, ``every < 1``,
        ``end_step < 0``, an unknown ``init``, a sparsity outside ``[0, 1)``;
        at ``init``, a ``where`` that selects nothing; at ``update``, missing
        ``params``.
      TypeError: a bad ``key``, ``schedule``, ``every`` or ``end_step`` type.
    """
    cfg = _config(sparsity, init, key, where, stacked, "gradient", drop_fraction, schedule,
                  every, end_step)
    return _wrap(cfg, optimizer)


def set_(
    optimizer: optax.GradientTransformation,
    sparsity: Any,
    *,
    end_step: int,
    key: jax.Array,
    drop_fraction: float = 0.3,
    schedule: Callable[[Any], Any] | None = None,
    every: int = 100,
    init: str = "erk",
    where: jtree.Where = None,
    stacked: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """SET (Mocanu et al. 2018): drop the smallest weights, grow uniformly at random.

    The same drop and counts as [jaxrm.prune.rigl][]; the ``k`` grown
    connections are a uniformly random ``k``-subset of the connections
    inactive before the update (the top ``k`` of i.i.d. uniform scores drawn
    from ``fold_in(key, step)``), so a run is deterministic for a given key.
    The paper's SET used a constant drop fraction: pass
    ``schedule=optax.constant_schedule(0.3)`` for it; the default is RigL's
    cosine decay, as jaxpruner does.

    Args:
      optimizer: the optax transformation to wrap.
      sparsity: as for [jaxrm.prune.rigl][].
      end_step: as for [jaxrm.prune.rigl][].
      key: the PRNG key of the initial mask and of the growth (kept in the state).
      drop_fraction: as for [jaxrm.prune.rigl][].
      schedule: as for [jaxrm.prune.rigl][].
      every: as for [jaxrm.prune.rigl][].
      init: as for [jaxrm.prune.rigl][].
      where: as for [jaxrm.prune.rigl][].
      stacked: as for [jaxrm.prune.rigl][].

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      [jaxrm.prune.SparseTrainingState][]; ``update`` needs ``params``.

    Raises:
      ValueError: as for [jaxrm.prune.rigl][].
      TypeError: as for [jaxrm.prune.rigl][].
    """
    cfg = _config(sparsity, init, key, where, stacked, "random", drop_fraction, schedule,
                  every, end_step)
    return _wrap(cfg, optimizer)


def static(
    optimizer: optax.GradientTransformation,
    sparsity: Any,
    *,
    key: jax.Array,
    init: str = "erk",
    where: jtree.Where = None,
    stacked: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Static sparse training: a random mask drawn at ``init`` and kept for the whole run.

    Each sparse leaf (each stacked slice) keeps exactly ``round((1 - s) * n)``
    uniformly random entries; gradients of the others are zeroed and
    ``optax.apply_updates`` keeps them exactly 0 (as [jaxrm.prune.sparsify][]).

    Args:
      optimizer: the optax transformation to wrap (e.g. ``optax.adam(1e-3)``).
      sparsity: the overall sparsity of the selected leaves, a float in
        ``[0, 1)`` spread over them by ``init``; or per-leaf sparsities (any
        per-leaf setting, see [jaxrm.tree.resolve][], e.g. from
        [jaxrm.prune.erk][]), used as given.
      init: ``"erk"`` ([jaxrm.prune.erk][], the papers' choice) or
        ``"uniform"`` (the same sparsity for every leaf).
      key: the PRNG key of the random initial mask (and of SET's growth).
      where: the sparse leaves (default [jaxrm.tree.weights][]).
      stacked: per-leaf stacked axes (see [jaxrm.tree.layouts][]); each slice
        is a layer with its own exact count.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      [jaxrm.prune.SparseTrainingState][]; ``update`` needs ``params``.

    Raises:
      ValueError: an unknown ``init`` or a sparsity outside ``[0, 1)``; at
        ``init``, a ``where`` that selects nothing; at ``update``, missing
        ``params``.
      TypeError: a bad ``key``.
    """
    return _wrap(_config(sparsity, init, key, where, stacked), optimizer)
