"""Relational losses: RKD distance and angle (Park et al. 2019), PKT (Passalis & Tefas 2018).

These compare the *relations* between the examples of a batch, so student and
teacher embeddings may have different widths. Embeddings are ``[batch, ...]``
(trailing axes are flattened); each loss returns one value per example, whose
mean over the (valid) batch is the batch loss. A ``mask`` removes padded
examples from every relation, exactly as if they were not in the batch. An
empty batch (``batch = 0``) has no relations: the result is an empty ``[0]``
array, whose sum is 0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from jaxrm.distill import _checks as c


def _validate(student_emb, teacher_emb, mask):
    names = ("student_emb", "teacher_emb")
    s = c.as_float_array(student_emb, names[0])
    t = c.as_float_array(teacher_emb, names[1])
    c.check_ndim(s, names[0], 2, "[batch, features]")
    c.check_ndim(t, names[1], 2, "[batch, features]")
    c.check_batch(s, t, names)
    return s, t, c.check_mask(mask, (s.shape[0],))


def _cast(s, t, m):
    """Flattens features, computes in at least float32, stops the teacher's
    gradient, clears padding; also returns the 0/1 weights of valid examples."""
    n = s.shape[0]
    dtype = c.compute_dtype(s, t)
    # Explicit widths: ``reshape(n, -1)`` cannot infer the width of an empty batch.
    s = s.reshape(n, math.prod(s.shape[1:])).astype(dtype)
    t = jax.lax.stop_gradient(t.reshape(n, math.prod(t.shape[1:])).astype(dtype))
    if m is None:
        return s, t, jnp.ones((n,), dtype)
    s = jnp.where(m[:, None], s, 0)
    t = jnp.where(m[:, None], t, 0)
    return s, t, m.astype(dtype)


def _pair_weights(w: jax.Array) -> jax.Array:
    """1 for pairs (i, j) of valid examples with i != j, else 0."""
    return w[:, None] * w[None, :] * (1 - jnp.eye(w.shape[0], dtype=w.dtype))


def _distances(e: jax.Array, w: jax.Array) -> jax.Array:
    """Pairwise Euclidean distances ``[n, n]``, zero diagonal, zero gradient at 0."""
    # Centering first makes |a|^2 + |b|^2 - 2 a.b accurate for distances that
    # are small next to the embeddings' norms (distances are shift invariant).
    mean = jnp.sum(e * w[:, None], axis=0) / jnp.maximum(jnp.sum(w), 1)
    e = e - mean
    sq = jnp.sum(jnp.square(e), axis=-1)
    d2 = sq[:, None] + sq[None, :] - 2 * (e @ e.T)
    d2 = jnp.where(jnp.eye(e.shape[0], dtype=bool), 0.0, jnp.maximum(d2, 0.0))
    positive = d2 > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)


def _normalized_distances(e: jax.Array, w: jax.Array) -> jax.Array:
    d = _distances(e, w)
    pw = _pair_weights(w)
    mu = jnp.sum(d * pw) / jnp.maximum(jnp.sum(pw), 1)
    return d / jnp.where(mu > 0, mu, 1.0)


def rkd_distance(
    student_emb: jax.Array,
    teacher_emb: jax.Array,
    *,
    delta: float = 1.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Distance-wise relational knowledge distillation (Park et al. 2019), per example.

    With ``psi(e)_ij = ||e_i - e_j|| / mu``, where ``mu`` is the mean distance
    over the pairs ``i != j`` of the batch (computed separately for student and
    teacher), example ``i`` gets ``mean_j huber_delta(psi(s)_ij - psi(t)_ij)``
    over the ``n`` valid examples ``j`` (``j = i`` included, where the term is
    0). The batch mean of the result is the authors' loss (their mean over all
    ``n**2`` entries); multiply by their weight (25) yourself.

    Args:
      student_emb: floating array ``[batch, ...]`` (trailing axes flattened).
      teacher_emb: floating array ``[batch, ...]``; its width may differ from
        the student's. Gets no gradient.
      delta: the Huber threshold (the paper's smooth L1 has ``delta = 1``).
      mask: optional bool array ``[batch]``; ``False`` examples are left out
        of every distance and of ``mu``, and their value is 0.

    Returns:
      Array of shape ``[batch]``; 0 when student and teacher distances are
      proportional (in particular when the embeddings are equal), positive
      otherwise. Memory is ``O(batch**2)``.

    Raises:
      TypeError: if an input is not floating or ``mask`` is not bool.
      ValueError: if the batch sizes differ, an input has fewer than 2
        dimensions or ``delta`` is not > 0.
    """
    c.positive_number(delta, "delta")
    s, t, m = _validate(student_emb, teacher_emb, mask)
    return _rkd_distance(s, t, m, delta)


@jax.jit
def _rkd_distance(s, t, m, delta):
    out_dtype = c.result_dtype(s, t)
    s, t, w = _cast(s, t, m)
    h = optax.huber_loss(_normalized_distances(s, w), _normalized_distances(t, w), delta=delta)
    per_example = (h @ w) / jnp.maximum(jnp.sum(w), 1)
    return c.finish(c.zero_where_equal(per_example, s, t, None), m, out_dtype)


def _angles(e: jax.Array) -> jax.Array:
    """``angles[a, b, c] = <unit(e_b - e_a), unit(e_c - e_a)>``; a zero difference is 0."""
    diff = e[None, :, :] - e[:, None, :]
    u = c.normalize(diff, axis=-1)
    return jnp.einsum("abd,acd->abc", u, u)


def rkd_angle(
    student_emb: jax.Array,
    teacher_emb: jax.Array,
    *,
    delta: float = 1.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Angle-wise relational knowledge distillation (Park et al. 2019), per example.

    ``psi(e)_abc = <unit(e_b - e_a), unit(e_c - e_a)>`` is the cosine of the
    angle at vertex ``e_a`` of the triangle ``(e_a, e_b, e_c)``. Example ``a``
    gets ``mean_{b,c} huber_delta(psi(s)_abc - psi(t)_abc)`` over the valid
    ``b, c`` (degenerate triples included, as in the authors' code, where
    their terms are 0). The batch mean is the authors' loss (their mean over
    ``n**3`` entries); multiply by their weight (50) yourself.

    Args:
      student_emb: floating array ``[batch, ...]`` (trailing axes flattened).
      teacher_emb: floating array ``[batch, ...]``; its width may differ.
        Gets no gradient.
      delta: the Huber threshold (the paper's smooth L1 has ``delta = 1``).
      mask: optional bool array ``[batch]``; ``False`` examples are left out
        of every triangle, and their value is 0.

    Returns:
      Array of shape ``[batch]``; 0 when all angles agree (e.g. equal
      embeddings, or a student that is a scaled, rotated and shifted copy of
      the teacher), positive otherwise. Memory is ``O(batch**2 * width +
      batch**3)``, like the authors' code.

    Raises:
      TypeError: if an input is not floating or ``mask`` is not bool.
      ValueError: if the batch sizes differ, an input has fewer than 2
        dimensions or ``delta`` is not > 0.
    """
    c.positive_number(delta, "delta")
    s, t, m = _validate(student_emb, teacher_emb, mask)
    return _rkd_angle(s, t, m, delta)


@jax.jit
def _rkd_angle(s, t, m, delta):
    out_dtype = c.result_dtype(s, t)
    s, t, w = _cast(s, t, m)
    h = optax.huber_loss(_angles(s), _angles(t), delta=delta)
    per_example = jnp.einsum("abc,b,c->a", h, w, w) / jnp.maximum(jnp.sum(w) ** 2, 1)
    return c.finish(c.zero_where_equal(per_example, s, t, None), m, out_dtype)


def _conditional(e: jax.Array, w: jax.Array) -> jax.Array:
    """``P[i, j]``: the cosine kernel ``(cos + 1) / 2`` normalized over ``j != i``."""
    u = c.normalize(e, axis=-1)
    k = (u @ u.T + 1.0) / 2.0 * _pair_weights(w)
    total = jnp.sum(k, axis=-1, keepdims=True)
    return k / jnp.where(total > 0, total, 1.0)


def pkt(
    student_emb: jax.Array,
    teacher_emb: jax.Array,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018), per example.

    The cosine kernel ``K(a, b) = (cos(a, b) + 1) / 2`` turns each batch into
    conditional distributions ``p_{j|i} = K(x_i, x_j) / sum_{k != i} K(x_i, x_k)``
    over the other examples ``j != i``. Example ``i`` gets
    ``KL(p^teacher_{.|i} || p^student_{.|i})``. The batch mean is the paper's
    loss divided by the batch size; the authors' code also keeps ``j = i`` and
    averages over ``n**2`` entries with an ``eps`` in the log, which is a
    different scale, not a different minimum.

    Args:
      student_emb: floating array ``[batch, ...]`` (trailing axes flattened).
      teacher_emb: floating array ``[batch, ...]``; its width may differ.
        Gets no gradient.
      mask: optional bool array ``[batch]``; ``False`` examples are left out
        of every distribution, and their value is 0.

    Returns:
      Array of shape ``[batch]``; 0 when the kernel distributions agree (e.g.
      equal embeddings, or positively scaled ones), positive otherwise. A
      batch of one valid example gives 0. Memory is ``O(batch**2)``.

    Raises:
      TypeError: if an input is not floating or ``mask`` is not bool.
      ValueError: if the batch sizes differ or an input has fewer than 2
        dimensions.
    """
    s, t, m = _validate(student_emb, teacher_emb, mask)
    return _pkt(s, t, m)


@jax.jit
def _pkt(s, t, m):
    out_dtype = c.result_dtype(s, t)
    s, t, w = _cast(s, t, m)
    p = _conditional(t, w)
    q = _conditional(s, w)
    tiny = jnp.finfo(q.dtype).tiny
    log_ratio = jnp.log(jnp.where(p > 0, p, 1.0)) - jnp.log(jnp.maximum(q, tiny))
    kl = jnp.sum(jnp.where(p > 0, p * log_ratio, 0.0), axis=-1)
    kl = c.zero_where_equal(jnp.maximum(kl, 0.0), s, t, None)
    return c.finish(kl, m, out_dtype)
