"""Losses on intermediate features: FitNets hints, attention transfer, cosine.

Features are ``[batch, ...]``; each loss returns one value per example (or per
token, when ``axis`` keeps more leading axes).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxrm.distill import _checks as c


def _validate_same_shape(student, teacher, names, mask, axis):
    s = c.as_float_array(student, names[0])
    t = c.as_float_array(teacher, names[1])
    c.check_ndim(s, names[0], 1, "[batch, ...]")
    c.check_ndim(t, names[1], 1, "[batch, ...]")
    c.check_batch(s, t, names)
    c.check_same_shape(s, t, names)
    axes = c.normalize_axis(axis, s.ndim)
    out_shape = tuple(d for i, d in enumerate(s.shape) if i not in axes)
    return s, t, axes, c.check_mask(mask, out_shape)


def _cast(s, t, m, axes):
    """Computes in at least float32, stops the teacher's gradient, clears padding."""
    dtype = c.compute_dtype(s, t)
    s = s.astype(dtype)
    t = jax.lax.stop_gradient(t.astype(dtype))
    if m is not None:
        keep = jnp.expand_dims(m, axes)
        s = jnp.where(keep, s, 0)
        t = jnp.where(keep, t, 0)
    return s, t


def hint(
    student_feat: jax.Array,
    teacher_feat: jax.Array,
    *,
    axis: int | tuple[int, ...] | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """FitNets hint loss (Romero et al. 2015): mean squared error per example.

    ``mean((student_feat - teacher_feat) ** 2)`` over the feature axes. The
    paper writes ``1/2 ||u_h - r(v_g)||^2``, a sum; the mean differs by the
    constant factor ``n / 2`` (``n`` features) and does not grow with width.

    When the student is narrower than the teacher, FitNets passes the student
    feature through a trained regressor ``r`` first, e.g. a Flax
    ``nnx.Linear(student_width, teacher_width, rngs=rngs)`` (or a 1x1
    ``nnx.Conv`` on feature maps) whose parameters are trained with the
    student and dropped afterwards: ``hint(regressor(student_feat), teacher_feat)``.

    Args:
      student_feat: floating array ``[batch, ...]`` (after any regressor).
      teacher_feat: floating array of the same shape; gets no gradient.
      axis: the axes averaged over; ``None`` (default) means every axis but
        the first, so the result has shape ``[batch]``. ``axis=-1`` on
        ``[batch, tokens, width]`` gives one value per token.
      mask: optional bool array broadcastable to the result's shape;
        ``False`` entries return 0 and get no gradient.

    Returns:
      Array of ``student_feat``'s shape without ``axis``; 0 exactly where the
      features are equal, positive elsewhere.

    Raises:
      TypeError: if an input is not floating or ``mask`` is not bool.
      ValueError: if the batch sizes or shapes differ, or ``axis`` is invalid.
    """
    names = ("student_feat", "teacher_feat")
    s, t, axes, m = _validate_same_shape(student_feat, teacher_feat, names, mask, axis)
    return _hint(s, t, m, axes)


@functools.partial(jax.jit, static_argnums=3)
def _hint(s, t, m, axes):
    out_dtype = c.result_dtype(s, t)
    s, t = _cast(s, t, m, axes)
    return c.finish(jnp.mean(jnp.square(s - t), axis=axes), m, out_dtype)  # exact at s == t


def cosine(
    student_feat: jax.Array,
    teacher_feat: jax.Array,
    *,
    axis: int | tuple[int, ...] | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Cosine distance ``1 - cos(student, teacher)`` per example, in ``[0, 2]``.

    Computed as ``||s/|s| - t/|t| ||^2 / 2``, which equals ``1 - cos`` for
    non-zero vectors, avoids the cancellation of ``1 - cos`` for nearly
    parallel ones and is exactly 0 when ``student_feat == teacher_feat``.
    A zero vector has cosine 0 with any non-zero vector (distance 1) and
    distance 0 to another zero vector.

    Args:
      student_feat: floating array ``[batch, ...]``.
      teacher_feat: floating array of the same shape; gets no gradient.
      axis: the axes forming each vector; ``None`` (default) means every axis
        but the first, so the result has shape ``[batch]``.
      mask: optional bool array broadcastable to the result's shape;
        ``False`` entries return 0 and get no gradient.

    Returns:
      Array of ``student_feat``'s shape without ``axis``; invariant to a
      positive scaling of either input.

    Raises:
      TypeError: if an input is not floating or ``mask`` is not bool.
      ValueError: if the batch sizes or shapes differ, or ``axis`` is invalid.
    """
    names = ("student_feat", "teacher_feat")
    s, t, axes, m = _validate_same_shape(student_feat, teacher_feat, names, mask, axis)
    return _cosine(s, t, m, axes)


@functools.partial(jax.jit, static_argnums=3)
def _cosine(s, t, m, axes):
    out_dtype = c.result_dtype(s, t)
    s, t = _cast(s, t, m, axes)
    s_zero = c.safe_norm(s, axes) == 0
    t_zero = c.safe_norm(t, axes) == 0
    dist = 0.5 * jnp.sum(jnp.square(c.normalize(s, axes) - c.normalize(t, axes)), axis=axes)
    dist = c.zero_where_equal(dist, s, t, axes)
    dist = jnp.where(s_zero != t_zero, 1.0, dist)
    return c.finish(dist, m, out_dtype)


def _attention_map(act: jax.Array, p, channel_axis: int) -> jax.Array:
    """Normalized spatial attention ``F / ||F||`` with ``F = mean_c |A_c|^p``, ``[batch, S]``."""
    powered = jnp.square(act) if p == 2 else jnp.abs(act) ** p
    f = jnp.mean(powered, axis=channel_axis)
    f = f.reshape(act.shape[0], math.prod(f.shape[1:]))  # an empty batch has no -1 to infer
    return c.normalize(f, axis=-1)


def attention_transfer(
    student_act: jax.Array,
    teacher_act: jax.Array,
    p: float = 2,
    *,
    channel_axis: int = -1,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Activation-based attention transfer (Zagoruyko & Komodakis 2017), per example.

    Each activation ``A`` of shape ``[batch, *spatial, channels]`` becomes a
    spatial attention map ``F(A) = mean_c |A_c|^p`` (the paper's sum over
    channels, divided by the channel count, which the normalization cancels),
    flattened and divided by its L2 norm. The loss is the mean over spatial
    positions of the squared difference of the two normalized maps, as in the
    authors' code; multiply by the paper's ``beta / 2`` (they use
    ``beta = 1000``) yourself. Student and teacher may have different channel
    counts but need the same spatial shape.

    Args:
      student_act: floating array ``[batch, *spatial, channels]`` (at least 3
        dimensions; channels last by default, the Flax layout).
      teacher_act: floating array with the same batch and spatial shape; gets
        no gradient.
      p: the power ``p > 0`` applied to activations (the paper uses 2); a
        Python number (static under ``jit``).
      channel_axis: the channel axis (``-1`` for NHWC, ``1`` for NCHW).
      mask: optional bool array broadcastable to ``[batch]``; ``False``
        entries return 0 and get no gradient.

    Returns:
      Array of shape ``[batch]``; 0 exactly where the attention maps are equal
      (so also when the activations are equal), positive elsewhere. A map of
      all-zero activations is the zero vector.

    Raises:
      TypeError: if an input is not floating, ``p`` is not a number or
        ``mask`` is not bool.
      ValueError: if the batch sizes or spatial shapes differ, an input has
        fewer than 3 dimensions, ``p`` is not > 0 or ``channel_axis`` is invalid.
    """
    c.positive_number(p, "p", traced=False)
    names = ("student_act", "teacher_act")
    s = c.as_float_array(student_act, names[0])
    t = c.as_float_array(teacher_act, names[1])
    for x, name in ((s, names[0]), (t, names[1])):
        c.check_ndim(x, name, 3, "[batch, *spatial, channels]")
    c.check_batch(s, t, names)
    if s.ndim != t.ndim:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of dimensions, got shapes "
            f"{s.shape} and {t.shape}"
        )
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, int):
        raise TypeError(f"channel_axis must be an int, got {channel_axis!r}")
    (ch,) = c.normalize_axis(channel_axis, s.ndim, "channel_axis")
    if ch == 0:
        raise ValueError("channel_axis must not be the batch axis 0")
    s_spatial = tuple(d for i, d in enumerate(s.shape) if i not in (0, ch))
    t_spatial = tuple(d for i, d in enumerate(t.shape) if i not in (0, ch))
    if s_spatial != t_spatial:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same spatial shape, got {s_spatial} and "
            f"{t_spatial} (shapes {s.shape} and {t.shape}); only the channel counts may differ"
        )
    m = c.check_mask(mask, (s.shape[0],))
    return _attention_transfer(s, t, m, float(p), ch)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _attention_transfer(s, t, m, p, ch):
    out_dtype = c.result_dtype(s, t)
    s, t = _cast(s, t, m, tuple(range(1, s.ndim)))
    q_s, q_t = _attention_map(s, p, ch), _attention_map(t, p, ch)
    loss = jnp.mean(jnp.square(q_s - q_t), axis=-1)
    loss = c.zero_where_equal(loss, s, t, tuple(range(1, s.ndim)))
    return c.finish(loss, m, out_dtype)
