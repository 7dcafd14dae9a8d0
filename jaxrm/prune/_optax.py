"""``sparsify``: an optax wrapper that prunes during training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrm import tree as jtree
from jaxrm.prune import _masks, _patterns, _scores
from jaxrm.tree import aligned

__all__ = ["SparsifyState", "masks_of", "sparsify"]

_SCORES = ("magnitude", "saliency", "random")


class SparsifyState(NamedTuple):
    """State of [`sparsify`][jaxrm.prune.sparsify].

    Attributes:
      count: the number of updates done (int32); the schedule is read at it.
      masks: the current masks, ``bool`` arrays (``True`` = kept) at pruned
        leaves and ``None`` elsewhere.
      inner_state: the wrapped optimizer's state.
    """

    count: jax.Array
    masks: Any
    inner_state: Any


def _where_masks(masks: Any, tree: Any, pruned: Callable[[Any, Any], Any]) -> Any:
    """Maps masked leaves of ``tree`` through ``pruned(mask, leaf)``; others pass."""
    t_leaves, treedef = jax.tree_util.tree_flatten(tree)
    m_leaves = aligned(tree, masks, "masks", shapes=False)
    out = [x if m is None else pruned(m, x) for m, x in zip(m_leaves, t_leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


def _mask_structure(masks: Any) -> Any:
    return jax.tree_util.tree_structure(masks, is_leaf=lambda x: x is None)


def _score_fn(score, key):
    if callable(score):
        return lambda params, grads, count: score(params, grads)
    if score == "magnitude":
        return lambda params, grads, count: _scores.magnitude(params)
    if score == "saliency":
        return lambda params, grads, count: _scores.saliency(params, grads)
    if score == "random":
        return lambda params, grads, count: _scores.random(jax.random.fold_in(key, count), params)
    raise ValueError(f"score must be one of {_SCORES} or a callable, got {score!r}")


def sparsify(
    optimizer: optax.GradientTransformation,
    schedule: Callable[[Any], Any],
    *,
    score: str | Callable[[Any, Any], Any] = "magnitude",
    scope: str = "layer",
    where: jtree.Where = None,
    pattern: _patterns.Pattern | None = None,
    every: int | None = None,
    key: jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``optimizer`` so that training prunes the selected weights on a schedule.

    On each update the gradients of pruned entries are zeroed, the wrapped
    optimizer runs, and the updates are corrected so that
    ``optax.apply_updates(params, updates)`` leaves every pruned entry exactly 0.
    The masks are recomputed from the current weights (and this step's
    gradients, for ``"saliency"``) only on the first step, on steps where ``schedule``'s
    value changes, and every ``every`` steps if given; other steps skip the
    mask code entirely (``lax.cond``), so they cost about as much as the dense
    step. The masks live in the state, so an orbax checkpoint holds them and
    a resumed run continues exactly.

    Args:
      optimizer: the optax transformation to wrap (e.g. ``optax.adam(1e-3)``).
      schedule: ``step -> sparsity`` (see [`polynomial`][jaxrm.prune.polynomial],
        [`one_shot`][jaxrm.prune.one_shot],
        [`iterative`][jaxrm.prune.iterative], [`constant`][jaxrm.prune.constant], or any optax-style
        schedule).
      score: ``"magnitude"``, ``"saliency"`` (``|w * g|`` with this step's
        gradients), ``"random"``, or a callable ``(params, grads) -> scores``.
      scope: ``"layer"`` or ``"global"`` (see [`masks`][jaxrm.prune.masks]).
      where: the leaves to prune (default [`jaxrm.tree.weights`][jaxrm.tree.weights]).
      pattern: ``None``, [`nm`][jaxrm.prune.nm], [`channels`][jaxrm.prune.channels] or
        [`blocks`][jaxrm.prune.blocks].
      every: also recompute the masks every ``every`` steps (``None``: only
        when the schedule changes).
      key: PRNG key for ``score="random"`` (default ``jax.random.key(0)``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      [`SparsifyState`][jaxrm.prune.SparsifyState]; ``update(updates, state, params)`` needs
      ``params``.

    Raises:
      ValueError: an unknown ``score`` or ``scope``, ``every < 1``; at
        ``init``, a ``where`` that selects nothing or a pattern that does not
        fit a leaf; at ``update``, missing ``params``.
      TypeError: ``schedule`` is not callable, or a bad ``pattern`` or
        ``every`` type.
    """
    if not callable(schedule):
        raise TypeError(f"schedule must be a callable step -> sparsity, got {schedule!r}")
    _masks._check_scope(scope)
    _masks._check_pattern_type(pattern)
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, int):
            raise TypeError(f"every must be an int or None, got {type(every).__name__}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
    key = jax.random.key(0) if key is None else key
    scores_of = _score_fn(score, key)
    inner = optax.with_extra_args_support(optimizer)

    def init(params):
        flat, picked = _masks._selected_leaves(params, where, pattern)
        computed = [jnp.ones(flat[i][1].shape, jnp.bool_) for i in picked]
        return SparsifyState(
            count=jnp.zeros((), jnp.int32),
            masks=_masks.build(params, flat, picked, computed),
            inner_state=inner.init(params),
        )

    def new_masks(weights, grads, count):
        sparsity = jnp.asarray(schedule(count), jnp.float32)
        scores = scores_of(weights, grads, count)
        flat, picked = _masks._selected_leaves(scores, where, pattern)
        sparsities = [sparsity] * len(picked)
        # The radix selection runs inside the compiled step on every backend: a
        # host callback inside a training step was measured several times slower
        # on CPU than the same callback on its own.
        computed = _masks.compute_masks(
            scores, flat, picked, sparsities, scope, pattern, host=False
        )
        return _masks.build(scores, flat, picked, computed)

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(
                "sparsify needs the parameters: call update(updates, state, params)"
            )
        aligned(params, state.masks, "state.masks")
        count = state.count
        masks = state.masks
        grads = updates

        now = jnp.asarray(schedule(count), jnp.float32)
        before = jnp.asarray(schedule(jnp.maximum(count - 1, 0)), jnp.float32)
        refresh = (count == 0) | (now != before)
        if every is not None:
            refresh = refresh | (count % every == 0)

        def recompute():
            fresh = new_masks(params, grads, count)
            # Same containers as the state's masks, as lax.cond requires.
            leaves = [m for _, m in jtree.leaves_with_paths(fresh, keep_none=True)]
            return jax.tree_util.tree_unflatten(_mask_structure(masks), leaves)

        # The masks are settled before the inner update, so on ordinary steps
        # the masking below fuses with the optimizer's own elementwise math.
        masks = jax.lax.cond(refresh, recompute, lambda: masks)
        masked_grads = _where_masks(masks, grads, lambda m, g: jnp.where(m, g, jnp.zeros_like(g)))
        inner_updates, inner_state = inner.update(
            masked_grads, state.inner_state, params, **extra_args
        )
        # p + (-p) is exactly 0, so apply_updates zeroes every pruned entry.
        u_leaves, treedef = jax.tree_util.tree_flatten(inner_updates)
        p_leaves = jax.tree_util.tree_leaves(params)
        m_leaves = aligned(params, masks, "masks", shapes=False)
        final = jax.tree_util.tree_unflatten(
            treedef,
            [
                u if m is None else jnp.where(m, u, (-p).astype(u.dtype))
                for m, u, p in zip(m_leaves, u_leaves, p_leaves)
            ],
        )
        return final, SparsifyState(optax.safe_int32_increment(count), masks, inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


def masks_of(opt_state: Any) -> Any:
    """Returns the masks of the [`sparsify`][jaxrm.prune.sparsify] state inside ``opt_state``.

    The state may be nested (``optax.chain``, ``optax.inject_hyperparams``, a
    Flax ``nnx.Optimizer``'s ``opt_state``, or the optimizer itself).

    Args:
      opt_state: an optimizer state holding one [`SparsifyState`][jaxrm.prune.SparsifyState], or an
        object with an ``opt_state`` attribute (e.g. ``nnx.Optimizer``).

    Returns:
      The masks pytree (``bool`` arrays, ``None`` leaves), with Flax NNX
      variable wrappers removed.

    Raises:
      ValueError: no, or more than one, [`SparsifyState`][jaxrm.prune.SparsifyState] is found.
    """
    if not isinstance(opt_state, SparsifyState) and hasattr(opt_state, "opt_state"):
        opt_state = opt_state.opt_state
    found = [
        x
        for x in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda x: isinstance(x, SparsifyState)
        )
        if isinstance(x, SparsifyState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"opt_state must hold exactly one SparsifyState (from jaxrm.prune.sparsify), "
            f"found {len(found)}"
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
