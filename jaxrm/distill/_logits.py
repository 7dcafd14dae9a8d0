"""Losses on class logits: Hinton et al. (2015) knowledge distillation.

Logits are ``[..., classes]`` with the class axis last (the optax convention);
every loss returns one value per leading index, shape ``logits.shape[:-1]``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm.distill import _checks as c

_PAIR = ("student_logits", "teacher_logits")


def _validate(student_logits, teacher_logits, mask, names=_PAIR):
    s = c.as_float_array(student_logits, names[0])
    t = c.as_float_array(teacher_logits, names[1])
    c.check_logits_pair(s, t, names)
    return s, t, c.check_mask(mask, s.shape[:-1])


def _cast(s, t, m):
    """Computes in at least float32, stops the teacher's gradient, clears padding."""
    dtype = c.compute_dtype(s, t)
    s = s.astype(dtype)
    t = jax.lax.stop_gradient(t.astype(dtype))
    if m is not None:
        # Padded rows may hold anything (even inf/NaN); replacing them keeps
        # both the value and the gradient of the kept rows clean.
        s = jnp.where(m[..., None], s, 0)
        t = jnp.where(m[..., None], t, 0)
    return s, t


def _log_softmax(x, temperature):
    return jax.nn.log_softmax(x / temperature, axis=-1)


def _kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(p || q) over the last axis from log-probabilities; 0 log 0 = 0."""
    p = jnp.exp(log_p)
    terms = jnp.where(p > 0, p * (log_p - log_q), 0.0)
    # Rounding can leave a tiny negative sum for nearly equal distributions.
    return jnp.maximum(jnp.sum(terms, axis=-1), 0.0)


def _cross_entropy(q: jax.Array, log_p: jax.Array) -> jax.Array:
    """-sum q log p over the last axis; entries with q == 0 contribute 0."""
    return -jnp.sum(jnp.where(q != 0, q * log_p, 0.0), axis=-1)


def kd(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    temperature: float = 1.0,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Knowledge-distillation loss of Hinton et al. (2015), per example.

    ``T**2 * KL(softmax(teacher / T) || softmax(student / T))`` over the last
    (class) axis, computed from log-softmax so it stays finite for logits of
    any finite size (e.g. ±1e4). The ``T**2`` factor keeps the gradient's
    scale independent of the temperature, as in the paper. The teacher is
    wrapped in ``stop_gradient``: only the student receives a gradient.

    The value is 0 when the softened distributions are equal (in particular
    when ``student_logits == teacher_logits``) and positive otherwise.

    Args:
      student_logits: floating array ``[..., classes]``.
      teacher_logits: floating array of the same shape.
      temperature: softmax temperature ``T > 0`` (a Python number, or a traced
        scalar for annealing under ``jit``).
      mask: optional bool array broadcastable to ``student_logits.shape[:-1]``;
        ``False`` marks padded examples/tokens, whose value is 0 and whose
        logits get no gradient (their content, even NaN, is ignored).

    Returns:
      Array of shape ``student_logits.shape[:-1]`` in the inputs' promoted
      dtype (computed in at least float32). Reduce it yourself, e.g.
      ``loss.sum() / mask.sum()`` for a masked mean.

    Raises:
      TypeError: if the logits are not floating, ``temperature`` is not a
        number or ``mask`` is not bool.
      ValueError: if the class counts or batch shapes differ, ``temperature``
        is not > 0, or ``mask`` does not broadcast.
    """
    c.positive_number(temperature, "temperature")
    s, t, m = _validate(student_logits, teacher_logits, mask)
    return _kd(s, t, m, temperature)


@jax.jit
def _kd(s, t, m, temperature):
    out_dtype = c.result_dtype(s, t)
    s, t = _cast(s, t, m)
    log_p_s, log_p_t = _log_softmax(s, temperature), _log_softmax(t, temperature)
    loss = c.zero_where_equal(temperature**2 * _kl(log_p_t, log_p_s), s, t, -1)
    return c.finish(loss, m, out_dtype)


def soft_cross_entropy(
    student_logits: jax.Array,
    teacher: jax.Array,
    temperature: float = 1.0,
    *,
    probs: bool = False,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Cross entropy of the student against the teacher's soft targets, per example.

    ``-T**2 * sum_k q_k log softmax(student / T)_k`` with
    ``q = softmax(teacher / T)`` (or ``q = teacher`` when ``probs=True``, e.g.
    cached teacher probabilities). It differs from [`kd`][jaxrm.distill.kd] by
    ``T**2 * H(q)``, the teacher's entropy, which does not depend on the
    student: both give the student the same gradient, but this one is not 0
    when student equals teacher (its minimum is ``T**2 * H(q)``).

    Args:
      student_logits: floating array ``[..., classes]``.
      teacher: floating array of the same shape: teacher logits, or
        probabilities summing to 1 over the last axis when ``probs=True``
        (then ``temperature`` softens only the student).
      temperature: softmax temperature ``T > 0``.
      probs: whether ``teacher`` holds probabilities instead of logits.
      mask: optional bool array broadcastable to ``student_logits.shape[:-1]``;
        ``False`` entries return 0 and get no gradient.

    Returns:
      Array of shape ``student_logits.shape[:-1]``, non-negative.

    Raises:
      TypeError: if an input is not floating, ``temperature`` is not a number,
        ``probs`` is not a bool or ``mask`` is not bool.
      ValueError: if the class counts or batch shapes differ, ``temperature``
        is not > 0, or ``mask`` does not broadcast.
    """
    c.positive_number(temperature, "temperature")
    if not isinstance(probs, bool | np.bool_):
        # bool("no") is True: a non-bool would silently pick a branch.
        raise TypeError(f"probs must be a bool, got {probs!r}")
    s, t, m = _validate(student_logits, teacher, mask, ("student_logits", "teacher"))
    return _soft_cross_entropy(s, t, m, temperature, bool(probs))


@functools.partial(jax.jit, static_argnums=4)
def _soft_cross_entropy(s, t, m, temperature, probs):
    out_dtype = c.result_dtype(s, t)
    s, t = _cast(s, t, m)
    q = t if probs else jax.nn.softmax(t / temperature, axis=-1)
    log_p_s = jax.nn.log_softmax(s / temperature, axis=-1)
    return c.finish(temperature**2 * _cross_entropy(q, log_p_s), m, out_dtype)


def kd_with_labels(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float = 0.5,
    temperature: float = 1.0,
    mask: jax.Array | None = None,
    ignore_label: int | None = None,
) -> jax.Array:
    """Hinton et al.'s combined objective: hard-label cross entropy plus ``kd``.

    ``alpha * kd(student, teacher, T) + (1 - alpha) * CE(student, labels)``,
    where the hard cross entropy uses temperature 1. ``alpha=0`` trains on
    labels alone, ``alpha=1`` on the teacher alone.

    Args:
      student_logits: floating array ``[..., classes]``.
      teacher_logits: floating array of the same shape.
      labels: integer class indices of shape ``student_logits.shape[:-1]``, or
        floating targets (one-hot or smoothed) of ``student_logits``' shape.
        Integer labels must lie in ``[0, classes)`` wherever ``mask`` is
        ``True`` (padded positions may hold anything), unless equal to
        ``ignore_label``: concrete labels out of range raise ``ValueError``;
        under ``jit``, where values cannot be checked, such an example's
        loss is NaN (as in ``optax.softmax_cross_entropy_with_integer_labels``),
        never a silently smaller loss.
      alpha: weight of the distillation term, in ``[0, 1]``.
      temperature: softmax temperature ``T > 0`` of the distillation term.
      mask: optional bool array broadcastable to ``student_logits.shape[:-1]``;
        ``False`` entries return 0 and get no gradient.
      ignore_label: an integer label that marks an unlabeled example (e.g.
        ``-1`` for semi-supervised batches): its hard term is 0 and its loss
        is ``alpha * kd`` alone. ``None`` (default): every label must be a
        class index.

    Returns:
      Array of shape ``student_logits.shape[:-1]``.

    Raises:
      TypeError: if the logits are not floating, ``labels`` is neither integer
        nor floating, a hyperparameter is not a number, or ``mask`` is not bool.
      ValueError: if shapes disagree (naming the argument), ``alpha`` is
        outside ``[0, 1]``, ``temperature`` is not > 0, or concrete integer
        ``labels`` fall outside ``[0, classes)`` at an unmasked position
        (other than ``ignore_label``).
    """
    c.unit_interval(alpha, "alpha")
    c.positive_number(temperature, "temperature")
    if ignore_label is not None and (
        isinstance(ignore_label, bool) or not isinstance(ignore_label, int | np.integer)
    ):
        raise TypeError(f"ignore_label must be None or an int, got {ignore_label!r}")
    s, t, m = _validate(student_logits, teacher_logits, mask)
    y = _targets(labels, s.shape)
    ignore = None if ignore_label is None else int(ignore_label)
    _check_label_range(y, m, s.shape[-1], ignore)
    return _kd_with_labels(s, t, y, m, alpha, temperature, ignore)


@functools.partial(jax.jit, static_argnums=6)
def _kd_with_labels(s, t, y, m, alpha, temperature, ignore):
    out_dtype = c.result_dtype(s, t)
    s, t = _cast(s, t, m)
    in_range = None
    if jnp.issubdtype(y.dtype, jnp.integer):
        in_range = (y >= 0) & (y < s.shape[-1])
        labeled = jnp.ones(y.shape, bool) if ignore is None else y != ignore
        in_range |= ~labeled
        # An unlabeled example's target is the zero vector: no hard term.
        y = jax.nn.one_hot(y, s.shape[-1], dtype=s.dtype) * labeled[..., None]
    y = jax.lax.stop_gradient(y.astype(s.dtype))
    if m is not None:
        y = jnp.where(m[..., None], y, 0)
    hard = _cross_entropy(y, jax.nn.log_softmax(s, axis=-1))
    if in_range is not None:
        # one_hot maps an out-of-range label to the zero vector, which would
        # drop the hard term without a trace; NaN flags it (masked rows are
        # zeroed by ``finish`` below, so padding sentinels stay harmless).
        hard = jnp.where(in_range, hard, jnp.nan)
    log_p_s, log_p_t = _log_softmax(s, temperature), _log_softmax(t, temperature)
    soft = c.zero_where_equal(temperature**2 * _kl(log_p_t, log_p_s), s, t, -1)
    return c.finish(alpha * soft + (1 - alpha) * hard, m, out_dtype)


def _check_label_range(
    y: jax.Array, m: jax.Array | None, classes: int, ignore: int | None
) -> None:
    """Raises ``ValueError`` for concrete integer labels outside ``[0, classes)``."""
    if not jnp.issubdtype(y.dtype, jnp.integer) or c.is_traced(y, m):
        return
    labels = np.asarray(y)
    bad = (labels < 0) | (labels >= classes)
    if ignore is not None:
        bad &= labels != ignore
    if m is not None:
        bad &= np.asarray(m)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"labels must be class indices in [0, {classes}) where mask is True; "
            f"labels{list(first)} = {int(labels[first])} ({int(bad.sum())} out of range); "
            "mask padded positions, or pass ignore_label= for unlabeled examples"
        )


def _targets(labels: Any, logits_shape: tuple[int, ...]) -> jax.Array:
    dtype = getattr(labels, "dtype", None)
    labels = jnp.asarray(labels)
    dtype = labels.dtype if dtype is None else dtype
    if jnp.issubdtype(dtype, jnp.integer):
        if labels.shape != logits_shape[:-1]:
            raise ValueError(
                f"integer labels must have shape {logits_shape[:-1]} "
                f"(student_logits.shape[:-1]), got {labels.shape}"
            )
        return labels  # one-hot inside the jitted core
    if jnp.issubdtype(dtype, jnp.floating):
        if labels.shape != logits_shape:
            raise ValueError(
                f"floating labels (one-hot or soft targets) must have shape {logits_shape} "
                f"(student_logits.shape), got {labels.shape}"
            )
        return labels
    raise TypeError(f"labels must be integer class indices or floating targets, got dtype {dtype}")
