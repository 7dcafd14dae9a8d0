"""Behaviour every loss shares: zero on equal inputs, teacher gets no gradient,
jit / vmap / bfloat16, and errors that name the argument."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrm import distill


def _labels_loss(s, t, **kw):
    labels = jnp.arange(s.shape[0]) % s.shape[-1]
    return distill.kd_with_labels(s, t, labels, alpha=1.0, temperature=2.0, **kw)


# name -> (loss(student, teacher, **kw), student shape, teacher shape)
LOSSES = {
    "kd": (lambda s, t, **kw: distill.kd(s, t, 2.0, **kw), (6, 5), (6, 5)),
    "hint": (distill.hint, (6, 3, 4), (6, 3, 4)),
    "cosine": (distill.cosine, (6, 8), (6, 8)),
    "attention_transfer": (distill.attention_transfer, (6, 4, 3, 5), (6, 4, 3, 7)),
    "rkd_distance": (distill.rkd_distance, (6, 4), (6, 9)),
    "rkd_angle": (distill.rkd_angle, (6, 4), (6, 9)),
    "pkt": (distill.pkt, (6, 4), (6, 9)),
}
PARAMS = sorted(LOSSES)
# kd_with_labels shares kd's machinery; the same checks run for it only in the slow set.
SLOW = pytest.param("kd_with_labels", marks=pytest.mark.slow)
LOSSES["kd_with_labels"] = (_labels_loss, (6, 5), (6, 5))
PARAMS = [*PARAMS, SLOW]


def _inputs(name, seed=0, dtype=jnp.float32):
    _, s_shape, t_shape = LOSSES[name]
    ks, kt = jax.random.split(jax.random.key(seed))
    return (jax.random.normal(ks, s_shape, dtype), jax.random.normal(kt, t_shape, dtype))


@pytest.mark.parametrize("name", PARAMS)
def test_zero_on_equal_positive_on_different(name):
    fn, s_shape, t_shape = LOSSES[name]
    s, t = _inputs(name)
    # "equal" = the teacher fed to itself, for losses whose widths may differ
    np.testing.assert_array_equal(fn(t, t), 0.0)
    if s_shape == t_shape:
        np.testing.assert_array_equal(fn(s, s), 0.0)
    assert np.all(np.asarray(fn(s, t)) > 0)
    chex.assert_shape(fn(s, t), (s_shape[0],))


@pytest.mark.parametrize("name", PARAMS)
def test_teacher_gets_no_gradient_student_does(name):
    fn = LOSSES[name][0]
    s, t = _inputs(name)
    g_s, g_t = jax.grad(lambda a, b: fn(a, b).sum(), argnums=(0, 1))(s, t)
    np.testing.assert_array_equal(g_t, 0.0)
    assert np.all(np.isfinite(g_s)) and np.any(g_s != 0)


@pytest.mark.parametrize("name", PARAMS)
def test_jit_and_vmap(name):
    fn = LOSSES[name][0]
    s0, t0 = _inputs(name, 0)
    s1, t1 = _inputs(name, 1)
    eager = np.stack([fn(s0, t0), fn(s1, t1)])
    np.testing.assert_allclose(jax.jit(fn)(s0, t0), eager[0], rtol=1e-6, atol=1e-7)
    # vmap over an extra leading axis (e.g. several teachers or groups)
    batched = jax.vmap(fn)(jnp.stack([s0, s1]), jnp.stack([t0, t1]))
    np.testing.assert_allclose(batched, eager, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", PARAMS)
def test_bfloat16_inputs(name):
    fn = LOSSES[name][0]
    s, t = _inputs(name)
    s16, t16 = s.astype(jnp.bfloat16), t.astype(jnp.bfloat16)
    got = fn(s16, t16)
    assert got.dtype == jnp.bfloat16
    want = fn(s16.astype(jnp.float32), t16.astype(jnp.float32))  # same rounded inputs
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-2, atol=1e-4)
    np.testing.assert_array_equal(fn(t16, t16).astype(np.float32), 0.0)
    g = jax.grad(lambda a: fn(a, t16).sum().astype(jnp.float32))(s16)
    assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(g.astype(np.float32)))


@pytest.mark.parametrize("name", PARAMS)
def test_batch_mismatch_names_arguments(name):
    fn = LOSSES[name][0]
    s, t = _inputs(name)
    with pytest.raises(ValueError, match=r"student_\w+ and teacher_\w+"):
        fn(s, t[:-1])


@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("which", ["student", "teacher"])
def test_integer_inputs_rejected_naming_argument(name, which):
    fn = LOSSES[name][0]
    s, t = _inputs(name)
    if which == "student":
        s = s.astype(jnp.int32)
    else:
        t = t.astype(jnp.int32)
    with pytest.raises(TypeError, match=f"{which}_\\w+ must be a floating array"):
        fn(s, t)


@pytest.mark.parametrize("name", PARAMS)
def test_mask_must_be_bool_of_matching_shape(name):
    fn = LOSSES[name][0]
    s, t = _inputs(name)
    with pytest.raises(TypeError, match="mask must be a bool"):
        fn(s, t, mask=jnp.ones((6,), jnp.int32))
    with pytest.raises(ValueError, match="mask of shape"):
        fn(s, t, mask=jnp.ones((5,), bool))


def test_logit_errors():
    s = jnp.zeros((4, 10))
    with pytest.raises(ValueError, match="student_logits has 10 classes and teacher_logits has 12"):
        distill.kd(s, jnp.zeros((4, 12)))
    with pytest.raises(ValueError, match="different batch shapes"):
        distill.kd(jnp.zeros((2, 3, 10)), jnp.zeros((2, 4, 10)))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            distill.kd(s, s, bad)
        with pytest.raises(ValueError, match="temperature"):
            distill.soft_cross_entropy(s, s, bad)
    with pytest.raises(TypeError, match="temperature"):
        distill.kd(s, s, "2")
    with pytest.raises(TypeError, match="teacher must be a floating"):
        distill.soft_cross_entropy(s, jnp.zeros((4, 10), jnp.int32))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            distill.kd_with_labels(s, s, jnp.zeros(4, jnp.int32), alpha=bad)
    with pytest.raises(ValueError, match="integer labels must have shape"):
        distill.kd_with_labels(s, s, jnp.zeros((4, 1), jnp.int32))
    with pytest.raises(ValueError, match="floating labels"):
        distill.kd_with_labels(s, s, jnp.zeros((4, 9)))
    with pytest.raises(TypeError, match="labels must be"):
        distill.kd_with_labels(s, s, jnp.zeros((4,), bool))
    with pytest.raises(ValueError, match="student_logits must have at least 1"):
        distill.kd(jnp.float32(1.0), jnp.float32(1.0))


def test_feature_and_relational_errors():
    a = jnp.zeros((4, 3, 3, 2))
    with pytest.raises(ValueError, match="same spatial shape"):
        distill.attention_transfer(a, jnp.zeros((4, 3, 2, 2)))
    with pytest.raises(ValueError, match="student_act must have at least 3"):
        distill.attention_transfer(jnp.zeros((4, 2)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="p must be"):
        distill.attention_transfer(a, a, p=0)
    with pytest.raises(TypeError, match="channel_axis must be an int"):
        distill.attention_transfer(a, a, channel_axis=(1, 2))
    with pytest.raises(ValueError, match="channel_axis must not be the batch"):
        distill.attention_transfer(a, a, channel_axis=0)
    with pytest.raises(ValueError, match="student_feat and teacher_feat must have the same shape"):
        distill.hint(jnp.zeros((4, 5)), jnp.zeros((4, 6)))
    with pytest.raises(ValueError, match="axis"):
        distill.cosine(jnp.zeros((4, 5)), jnp.zeros((4, 5)), axis=2)
    with pytest.raises(ValueError, match="student_emb must have at least 2"):
        distill.pkt(jnp.zeros((4,)), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="delta"):
        distill.rkd_distance(jnp.zeros((4, 2)), jnp.zeros((4, 2)), delta=-1.0)


def test_inputs_not_mutated_and_numpy_accepted():
    s = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    t = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    s0, t0 = s.copy(), t.copy()
    for name in ("kd", "hint", "cosine", "rkd_distance", "rkd_angle", "pkt"):
        fn = getattr(distill, name)
        fn(s, t, mask=np.array([True, True, False, True, True]))
    np.testing.assert_array_equal(s, s0)
    np.testing.assert_array_equal(t, t0)


def test_temperature_can_be_traced():
    s, t = _inputs("kd")
    f = jax.jit(lambda temp: distill.kd(s, t, temp))
    np.testing.assert_allclose(f(3.0), distill.kd(s, t, 3.0), rtol=1e-6)


EMPTY = {
    "rkd_distance": (distill.rkd_distance, (0, 4), (0, 9)),
    "rkd_angle": (distill.rkd_angle, (0, 4), (0, 9)),
    "pkt": (distill.pkt, (0, 4), (0, 9)),
    "attention_transfer": (distill.attention_transfer, (0, 4, 3, 5), (0, 4, 3, 7)),
    "hint": (distill.hint, (0, 3, 4), (0, 3, 4)),
    "cosine": (distill.cosine, (0, 8), (0, 8)),
    "kd": (lambda s, t, **kw: distill.kd(s, t, 2.0, **kw), (0, 5), (0, 5)),
}


@pytest.mark.parametrize("name", sorted(EMPTY))
def test_empty_batch_gives_empty_per_example_values(name):
    # An empty batch (the last shard of a dataset, a fully padded step) has no
    # examples: every loss returns shape [0] (sum 0) and a zero-size gradient,
    # eagerly and under jit, with or without a mask.
    fn, s_shape, t_shape = EMPTY[name]
    s, t = jnp.zeros(s_shape, jnp.bfloat16), jnp.zeros(t_shape, jnp.bfloat16)
    for f in (fn, jax.jit(fn)):
        out = f(s, t)
        chex.assert_shape(out, (0,))
        assert out.dtype == jnp.bfloat16
        chex.assert_shape(f(s, t, mask=jnp.zeros((0,), bool)), (0,))
    g = jax.grad(lambda a: fn(a, t).astype(jnp.float32).sum())(s)
    chex.assert_shape(g, s_shape)


@pytest.mark.parametrize("probs", ["no", 1, None])
def test_soft_cross_entropy_probs_must_be_a_bool(probs):
    # bool("no") is True: anything but a bool would silently choose a branch.
    s = jnp.zeros((2, 3))
    with pytest.raises(TypeError, match="probs"):
        distill.soft_cross_entropy(s, s, probs=probs)
