"""Each loss against an independent float64 numpy implementation of its paper."""

import _distill_ref as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrm import distill

RTOL, ATOL = 2e-5, 1e-6


def _normal(seed, shape, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 5)])
def test_kd_matches_hinton_formula(temperature, shape):
    s, t = _normal(0, shape, 3), _normal(1, shape, 3)
    got = distill.kd(s, t, temperature)
    assert got.shape == shape[:-1]
    np.testing.assert_allclose(got, ref.kd(s, t, temperature), rtol=RTOL, atol=ATOL)


def test_kd_extreme_logits_finite_and_exact():
    # Opposite one-hot-like teachers at +-1e4: KL is ~ the logit gap, no inf/nan.
    s = np.array([[1e4, -1e4, 0.0], [3.0, -1e4, 1e4]], np.float32)
    t = np.array([[-1e4, 1e4, 0.0], [3.0, -1e4, 1e4]], np.float32)
    for temperature in (1.0, 2.0, 10.0):
        got = distill.kd(s, t, temperature)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, ref.kd(s, t, temperature), rtol=1e-5)
        g = jax.grad(lambda x, T=temperature: distill.kd(x, t, T).sum())(jnp.asarray(s))
        assert np.all(np.isfinite(g))
        # d kd / d s = T (softmax(s/T) - softmax(t/T))
        expect = temperature * (np.exp(ref.log_softmax(s / temperature))
                                - np.exp(ref.log_softmax(t / temperature)))
        np.testing.assert_allclose(g, expect, atol=1e-5)


def test_kd_gradient_is_scaled_probability_difference():
    s, t = _normal(2, (4, 7), 2), _normal(3, (4, 7), 2)
    for temperature in (1.0, 3.0):
        g = jax.grad(lambda x, T=temperature: distill.kd(x, t, T).sum())(jnp.asarray(s))
        expect = temperature * (np.exp(ref.log_softmax(s / temperature))
                                - np.exp(ref.log_softmax(t / temperature)))
        np.testing.assert_allclose(g, expect, atol=1e-6)


def test_kd_teacher_with_minus_inf_logits():
    # A teacher that rules classes out (-inf) gives a finite loss and gradient.
    s = _normal(4, (3, 5))
    t = _normal(5, (3, 5))
    t[:, 0] = -np.inf
    got = distill.kd(s, t, 2.0)
    assert np.all(np.isfinite(got))
    t_ref = t.copy()
    t_ref[:, 0] = -1e30
    np.testing.assert_allclose(got, ref.kd(s, t_ref, 2.0), rtol=RTOL)
    assert np.all(np.isfinite(jax.grad(lambda x: distill.kd(x, t, 2.0).sum())(jnp.asarray(s))))


def test_soft_cross_entropy_logits_and_probs():
    s, t = _normal(6, (5, 8), 2), _normal(7, (5, 8), 2)
    temperature = 3.0
    q = np.exp(ref.log_softmax(t / temperature))
    want = ref.soft_cross_entropy(s, q, temperature)
    np.testing.assert_allclose(distill.soft_cross_entropy(s, t, temperature), want, rtol=RTOL)
    np.testing.assert_allclose(
        distill.soft_cross_entropy(s, q.astype(np.float32), temperature, probs=True), want,
        rtol=RTOL,
    )
    # It is kd plus the teacher's entropy (times T^2), which the student cannot change.
    entropy = -np.sum(q * np.log(q), axis=-1)
    np.testing.assert_allclose(
        distill.soft_cross_entropy(s, t, temperature),
        ref.kd(s, t, temperature) + temperature**2 * entropy, rtol=RTOL,
    )
    g1 = jax.grad(lambda x: distill.soft_cross_entropy(x, t, temperature).sum())(jnp.asarray(s))
    g2 = jax.grad(lambda x: distill.kd(x, t, temperature).sum())(jnp.asarray(s))
    np.testing.assert_allclose(g1, g2, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_kd_with_labels(alpha):
    s, t = _normal(8, (6, 4), 2), _normal(9, (6, 4), 2)
    labels = np.array([0, 1, 2, 3, 0, 2])
    want = ref.kd_with_labels(s, t, labels, alpha, 2.0)
    got = distill.kd_with_labels(s, t, labels, alpha=alpha, temperature=2.0)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    onehot = np.eye(4, dtype=np.float32)[labels]
    got = distill.kd_with_labels(s, t, onehot, alpha=alpha, temperature=2.0)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_kd_with_labels_unknown_label_keeps_only_the_soft_term():
    # Semi-supervised use: an unlabeled example gets ignore_label (-1 here),
    # which drops its hard term and leaves alpha * kd; labeled rows are unchanged.
    s, t = _normal(10, (5, 4), 2), _normal(11, (5, 4), 2)
    labels = np.array([0, -1, 2, -1, 3])
    got = distill.kd_with_labels(s, t, labels, alpha=0.9, temperature=1.0, ignore_label=-1)
    known = labels >= 0
    want = np.where(
        known,
        ref.kd_with_labels(s, t, np.where(known, labels, 0), 0.9, 1.0),
        0.9 * ref.kd(s, t, 1.0),
    )
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("bad", [4, -1, 99])
def test_kd_with_labels_out_of_range_label_is_an_error_not_a_smaller_loss(bad):
    s, t = _normal(12, (5, 4), 2), _normal(13, (5, 4), 2)
    labels = np.array([0, 1, bad, 3, 2])
    with pytest.raises(ValueError, match=r"labels\[2\] = " + str(bad)):
        distill.kd_with_labels(s, t, labels, alpha=0.5)
    # -1 is only a sentinel when declared; another label is still an error then.
    if bad != -1:
        with pytest.raises(ValueError, match="out of range"):
            distill.kd_with_labels(s, t, labels, alpha=0.5, ignore_label=-1)


def test_kd_with_labels_out_of_range_under_jit_is_nan_for_that_example():
    s, t = _normal(14, (5, 4), 2), _normal(15, (5, 4), 2)
    labels = np.array([0, 1, 7, 3, 2])
    got = np.asarray(jax.jit(lambda a, b, y: distill.kd_with_labels(a, b, y))(s, t, labels))
    assert np.isnan(got[2])
    ok = labels < 4
    want = ref.kd_with_labels(s, t, np.where(ok, labels, 0), 0.5, 1.0)
    np.testing.assert_allclose(got[ok], want[ok], rtol=RTOL, atol=ATOL)


def test_kd_with_labels_masked_positions_may_hold_any_sentinel():
    s, t = _normal(16, (4, 4), 2), _normal(17, (4, 4), 2)
    labels = np.array([0, -100, 3, 10])
    mask = np.array([True, False, True, False])
    for fn in (distill.kd_with_labels, jax.jit(distill.kd_with_labels)):
        got = np.asarray(fn(s, t, labels, mask=mask))
        want = ref.kd_with_labels(s, t, np.where(mask, labels, 0), 0.5, 1.0)
        np.testing.assert_allclose(got, np.where(mask, want, 0.0), rtol=RTOL, atol=ATOL)


def test_kd_with_labels_ignore_label_must_be_an_int():
    s = _normal(18, (2, 3))
    with pytest.raises(TypeError, match="ignore_label"):
        distill.kd_with_labels(s, s, np.array([0, 1]), ignore_label=0.5)


def test_kd_with_labels_alpha_zero_is_optax_cross_entropy():
    import optax

    s, t = _normal(10, (2, 3, 5)), _normal(11, (2, 3, 5))
    labels = np.random.default_rng(0).integers(0, 5, size=(2, 3))
    np.testing.assert_allclose(
        distill.kd_with_labels(s, t, labels, alpha=0.0),
        optax.softmax_cross_entropy_with_integer_labels(s, labels), rtol=1e-6,
    )


@pytest.mark.parametrize("shape", [(6, 3, 4), (3, 4, 4, 2)])
def test_hint_is_mean_squared_error(shape):
    s, t = _normal(12, shape), _normal(13, shape)
    np.testing.assert_allclose(distill.hint(s, t), ref.hint(s, t), rtol=RTOL)


def test_hint_per_token_axis():
    s, t = _normal(14, (2, 3, 8)), _normal(15, (2, 3, 8))
    got = distill.hint(s, t, axis=-1)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, np.mean((s.astype(np.float64) - t) ** 2, axis=-1), rtol=RTOL)


@pytest.mark.parametrize("shape", [(6, 8), (3, 2, 5)])
def test_cosine_is_one_minus_cosine_similarity(shape):
    s, t = _normal(16, shape), _normal(17, shape)
    np.testing.assert_allclose(distill.cosine(s, t), ref.cosine(s, t), rtol=RTOL, atol=ATOL)


def test_cosine_opposite_orthogonal_and_zero_vectors():
    s = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]], np.float32)
    t = np.array([[-2.0, 0.0], [0.0, 3.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(distill.cosine(s, t), [2.0, 1.0, 1.0, 0.0], atol=1e-7)
    g = jax.grad(lambda x: distill.cosine(x, t).sum())(jnp.asarray(s))
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("p", [1, 2, 4])
def test_attention_transfer_matches_paper(p):
    s = _normal(18, (6, 4, 3, 5))
    t = _normal(19, (6, 4, 3, 7))  # more teacher channels
    got = distill.attention_transfer(s, t, p)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, ref.attention_transfer(s, t, p), rtol=1e-4, atol=1e-7)


def test_attention_transfer_channels_first():
    s = _normal(20, (2, 6, 5, 5))
    t = _normal(21, (2, 3, 5, 5))
    got = distill.attention_transfer(s, t, channel_axis=1)
    want = ref.attention_transfer(np.moveaxis(s, 1, -1), np.moveaxis(t, 1, -1), 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("widths", [(4, 4), (4, 9)])
def test_rkd_distance_matches_paper(widths):
    s, t = _normal(22, (6, widths[0])), _normal(23, (6, widths[1]), 3)
    np.testing.assert_allclose(
        distill.rkd_distance(s, t), ref.rkd_distance(s, t), rtol=1e-4, atol=1e-6
    )


def test_rkd_distance_huber_linear_region_and_offset_embeddings():
    # Far-apart clusters make some normalized distance gaps exceed delta; a big
    # common offset checks the pairwise distances stay accurate.
    rng = np.random.default_rng(24)
    t = (rng.normal(size=(8, 5)) + 100.0).astype(np.float32)
    s = np.concatenate([rng.normal(size=(4, 5)), rng.normal(size=(4, 5)) + 20], 0) + 100.0
    s = s.astype(np.float32)
    for delta in (0.1, 1.0):
        np.testing.assert_allclose(
            distill.rkd_distance(s, t, delta=delta), ref.rkd_distance(s, t, delta),
            rtol=2e-4, atol=1e-6,
        )


@pytest.mark.parametrize("widths", [(4, 4), (4, 9)])
def test_rkd_angle_matches_paper(widths):
    s, t = _normal(25, (6, widths[0])), _normal(26, (6, widths[1]))
    np.testing.assert_allclose(distill.rkd_angle(s, t), ref.rkd_angle(s, t), rtol=1e-4, atol=1e-6)


def test_rkd_angle_with_duplicate_embeddings():
    s, t = _normal(27, (5, 3)), _normal(28, (5, 3))
    s[3] = s[1]  # a degenerate triangle: its angle terms are 0, not NaN
    got = distill.rkd_angle(s, t)
    np.testing.assert_allclose(got, ref.rkd_angle(s, t), rtol=1e-4, atol=1e-6)
    g = jax.grad(lambda x: distill.rkd_angle(x, t).sum())(jnp.asarray(s))
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("widths", [(4, 4), (4, 9)])
def test_pkt_matches_paper(widths):
    s, t = _normal(29, (6, widths[0])), _normal(30, (6, widths[1]))
    np.testing.assert_allclose(distill.pkt(s, t), ref.pkt(s, t), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "name",
    [
        "rkd_distance", "rkd_angle", "pkt", "attention_transfer",
        pytest.param("hint", marks=pytest.mark.slow),
        pytest.param("cosine", marks=pytest.mark.slow),
    ],
)
def test_mask_equals_dropping_padded_examples(name):
    fn = getattr(distill, name)
    shape = (7, 3, 2, 4) if name == "attention_transfer" else (7, 5)
    s, t = _normal(31, shape), _normal(32, shape)
    mask = np.array([True, False, True, True, False, True, True])
    s_pad, t_pad = s.copy(), t.copy()
    s_pad[~mask] = np.nan  # padding content must not leak into anything
    t_pad[~mask] = 1e30
    got = fn(s_pad, t_pad, mask=mask)
    np.testing.assert_allclose(got[mask], fn(s[mask], t[mask]), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got[~mask], 0.0)
    g = jax.grad(lambda x: fn(x, t_pad, mask=mask).sum())(jnp.asarray(s_pad))
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[~mask], 0.0)


@pytest.mark.parametrize(
    "name", ["kd", pytest.param("soft_cross_entropy", marks=pytest.mark.slow), "kd_with_labels"]
)
def test_logit_losses_mask_tokens(name):
    s, t = _normal(33, (2, 4, 6)), _normal(34, (2, 4, 6))
    mask = np.array([[True, True, False, False], [True, True, True, False]])
    s_pad = s.copy()
    s_pad[~mask] = np.nan
    labels = np.array([[1, 2, -1, -1], [0, 5, 3, -1]])
    if name == "kd_with_labels":
        fn = lambda a, b, **kw: distill.kd_with_labels(a, b, labels, alpha=0.4, ignore_label=-1,
                                                       **kw)
    else:
        fn = getattr(distill, name)
    got = fn(s_pad, t, mask=mask)
    assert got.shape == (2, 4)
    np.testing.assert_allclose(got[mask], fn(s, t)[mask], rtol=1e-6)
    np.testing.assert_array_equal(got[~mask], 0.0)
    g = jax.grad(lambda x: fn(x, t, mask=mask).sum())(jnp.asarray(s_pad))
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[~mask], 0.0)
    # A per-example mask broadcasts over tokens.
    got = fn(s, t, mask=np.array([[True], [False]]))
    np.testing.assert_array_equal(got[1], 0.0)
    np.testing.assert_allclose(got[0], fn(s, t)[0], rtol=1e-6)
