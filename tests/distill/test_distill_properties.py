"""Properties of the losses over generated inputs (fixed shapes: one compile each)."""

import _distill_ref as ref
import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jaxrm import distill

SETTINGS = settings(max_examples=10, deadline=None)
N, D = 5, 4


def arrays(shape, lo=-10.0, hi=10.0):
    return hnp.arrays(
        np.float32, shape,
        elements=st.floats(lo, hi, width=32, allow_subnormal=False),
    )


@SETTINGS
@given(arrays((N, D), -50, 50), arrays((N, D), -50, 50), st.floats(0.5, 8.0),
       arrays((N, 1), -100, 100))
def test_kd_nonnegative_shift_invariant_and_matches_reference(s, t, temperature, shift):
    got = np.asarray(distill.kd(s, t, temperature))
    assert np.all(got >= 0)
    np.testing.assert_allclose(got, ref.kd(s, t, temperature), rtol=1e-4, atol=1e-4)
    shifted = np.asarray(distill.kd(s + shift, t, temperature))
    np.testing.assert_allclose(shifted, got, rtol=1e-3, atol=2e-3)


@SETTINGS
@given(arrays((N, D)))
def test_every_loss_is_exactly_zero_on_equal_inputs(x):
    # includes zero rows and duplicate rows, which hypothesis likes to generate
    for name in ("kd", "soft_cross_entropy", "hint", "cosine", "rkd_distance", "rkd_angle", "pkt"):
        got = np.asarray(getattr(distill, name)(x, x))
        if name == "soft_cross_entropy":  # its minimum is T^2 H(teacher), not 0
            want = ref.soft_cross_entropy(x, np.exp(ref.log_softmax(x)), 1)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_array_equal(got, 0.0, err_msg=name)
    a = x.reshape(N, 2, 2, 1) * np.ones((1, 1, 1, 3), np.float32)
    np.testing.assert_array_equal(distill.attention_transfer(a, a), 0.0)


def _distinct(x, min_gap=0.5):
    d = np.linalg.norm(x[:, None] - x[None], axis=-1) + np.eye(len(x)) * 1e9
    return d.min() > min_gap


def _distinct_directions(x, min_gap=0.1):
    """Rows of norm > 1e-3 whose directions differ from each other and from their negatives."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms < 1e-3):
        return False
    u = x / norms
    return _distinct(np.concatenate([u, -u]), min_gap)


@SETTINGS
@given(arrays((N, D)), arrays((N, 3)), st.floats(0.1, 10.0), arrays((1, D)))
def test_rkd_distance_invariant_to_student_scale_and_shift(s, t, scale, shift):
    assume(_distinct(s) and _distinct(t))
    base = np.asarray(distill.rkd_distance(s, t))
    np.testing.assert_allclose(base, ref.rkd_distance(s, t), rtol=1e-3, atol=1e-5)
    moved = np.asarray(distill.rkd_distance(s * scale + shift, t))
    np.testing.assert_allclose(moved, base, rtol=2e-3, atol=1e-5)


@SETTINGS
@given(arrays((N, D)), st.floats(0.1, 10.0), arrays((1, D)), st.integers(0, 2**31 - 1))
def test_rkd_angle_zero_for_similar_copy_of_teacher(t, scale, shift, seed):
    # rotation + scale + shift preserves every angle
    assume(_distinct(t))
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(D, D)))
    s = (t.astype(np.float64) @ q * scale + shift).astype(np.float32)
    np.testing.assert_allclose(distill.rkd_angle(s, t), 0.0, atol=1e-5)
    np.testing.assert_allclose(distill.rkd_distance(s, t), 0.0, atol=1e-5)


@SETTINGS
@given(arrays((N, D)), arrays((N, 6)), arrays((N, 1), 0.125, 8.0))
def test_pkt_invariant_to_per_example_scale(s, t, scale):
    # Parallel rows make the cosine kernels degenerate (the reference divides
    # by zero there), so the property is stated for rows of distinct directions.
    assume(_distinct_directions(s) and _distinct_directions(t))
    base = np.asarray(distill.pkt(s, t))
    assert np.all(base >= 0)
    np.testing.assert_allclose(base, ref.pkt(s, t), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(distill.pkt(s * scale, t), base, rtol=1e-3, atol=1e-5)


@SETTINGS
@given(arrays((N, D)), arrays((N, D)), arrays((N, 1), 0.125, 8.0))
def test_cosine_in_range_and_scale_invariant(s, t, scale):
    base = np.asarray(distill.cosine(s, t))
    assert np.all((base >= 0) & (base <= 2 + 1e-6))
    np.testing.assert_allclose(distill.cosine(s * scale, t), base, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(arrays((N, 3, 2, 4)), arrays((N, 3, 2, 2)), st.floats(0.1, 10.0))
def test_attention_transfer_scale_invariant_and_bounded(s, t, scale):
    base = np.asarray(distill.attention_transfer(s, t))
    # two unit vectors over 6 positions: mean squared difference <= 4 / 6
    assert np.all((base >= 0) & (base <= 4 / 6 + 1e-6))
    np.testing.assert_allclose(distill.attention_transfer(s * scale, t), base, rtol=1e-3,
                               atol=1e-6)
