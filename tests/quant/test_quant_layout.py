"""QArray storage: group-wise scales, int4 packing, masks, per-slice scales and codebooks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrm import quant
from jaxrm.quant._types import pack_int4, unpack_int4


def test_group_wise_scales_match_numpy():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 6)).astype(np.float32)
    w[:128] *= 10.0  # a loud first group: group-wise scales must not share it
    q = quant.uniform({"kernel": w}, 4, axis=-1, group_size=128, where="kernel")["kernel"]
    assert q.scale.shape == (3, 6) and q.group_size == 128
    qmax = 7
    for g, (lo, hi) in enumerate([(0, 128), (128, 256), (256, 300)]):
        amax = np.max(np.abs(w[lo:hi]), axis=0)
        np.testing.assert_allclose(np.asarray(q.scale[g]), amax / qmax, rtol=1e-6)
        ref = np.clip(np.round(w[lo:hi] / (amax / qmax)), -qmax, qmax)
        np.testing.assert_array_equal(np.asarray(q.values[lo:hi]), ref)
    full = np.repeat(np.asarray(q.scale), 128, axis=0)[:300]
    np.testing.assert_allclose(
        np.asarray(q.dequantize()), np.asarray(q.values, np.float32) * full, rtol=1e-6
    )
    per_channel = quant.uniform({"kernel": w}, 4, axis=-1, where="kernel")["kernel"]
    err = lambda x: float(np.mean((np.asarray(x.dequantize()) - w) ** 2))
    assert err(q) < err(per_channel)


def test_group_wise_asymmetric_and_equinox_layout():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 64)).astype(np.float32)  # Equinox Linear (out, in)
    q = quant.uniform({"weight": w}, 8, symmetric=False, axis=0, group_size=16, where="weight")[
        "weight"
    ]
    assert q.scale.shape == (5, 4)
    x = np.asarray(q.dequantize())
    assert np.max(np.abs(x - w)) <= float(np.max(q.scale)) / 2 * (1 + 1e-5)


@pytest.mark.parametrize("signed", [True, False])
def test_int4_pack_round_trip(signed):
    rng = np.random.default_rng(2)
    lo, hi, dt = (-8, 8, np.int8) if signed else (0, 16, np.uint8)
    v = rng.integers(lo, hi, size=(3, 5, 8)).astype(dt)
    p = pack_int4(jnp.asarray(v))
    assert p.shape == (3, 5, 4) and p.dtype == dt
    np.testing.assert_array_equal(np.asarray(unpack_int4(p, signed)), v)
    # byte j holds entry 2j in its low nibble
    np.testing.assert_array_equal(np.asarray(p, np.uint8) & 15, v[..., 0::2].astype(np.uint8) & 15)


@pytest.mark.parametrize("symmetric", [True, False])
def test_uniform_packed_decodes_like_unpacked(symmetric):
    w = np.random.default_rng(3).standard_normal((16, 10)).astype(np.float32)
    kw = dict(symmetric=symmetric, axis=-1, where="k")
    packed = quant.uniform({"k": w}, 4, pack=True, **kw)["k"]
    plain = quant.uniform({"k": w}, 4, **kw)["k"]
    assert packed.packed and packed.values.shape == (16, 5) and packed.shape == (16, 10)
    np.testing.assert_array_equal(np.asarray(packed.integers()), np.asarray(plain.values))
    np.testing.assert_array_equal(np.asarray(packed.dequantize()), np.asarray(plain.dequantize()))
    odd = quant.uniform({"k": w[:, :9]}, 4, pack=True, **kw)["k"]
    assert not odd.packed and odd.values.shape == (16, 9)
    assert not quant.uniform({"k": w}, 8, pack=True, **kw)["k"].packed


def test_mask_lives_in_qarray_and_decodes_to_zero():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((12, 6)).astype(np.float32)
    keep = rng.random(w.shape) > 0.6
    w_pruned = np.where(keep, w, 7.0)  # pruned entries hold junk: they must not count
    for symmetric in (True, False):
        q = quant.uniform({"k": w_pruned}, 8, symmetric=symmetric, masks={"k": keep}, where="k")[
            "k"
        ]
        x = np.asarray(q.dequantize())
        assert np.all(x[~keep] == 0.0)
        ref = quant.uniform({"k": np.where(keep, w, 0.0)}, 8, symmetric=symmetric, where="k")["k"]
        np.testing.assert_array_equal(np.asarray(q.scale), np.asarray(ref.scale))
        # without the mask the stored values are still the grid's zero
        np.testing.assert_array_equal(np.asarray(q.replace(mask=None).dequantize())[~keep], 0.0)


def test_per_slice_scales_and_codebooks_for_stacked_leaves():
    rng = np.random.default_rng(5)
    layer_scales = np.asarray([4.0, 2.0, 1.0, 0.5], np.float32)
    w = rng.standard_normal((4, 16, 8)).astype(np.float32) * layer_scales[:, None, None]
    q = quant.uniform({"kernel": w}, 4, axis=-1, stacked=0, where="kernel")["kernel"]
    assert q.scale.shape == (4, 1, 8)
    c = quant.kmeans({"kernel": w}, 3, stacked=0, where="kernel")["kernel"]
    assert c.centroids.shape == (4, 1, 1, 8)
    for i in range(4):
        alone = quant.uniform({"kernel": w[i]}, 4, axis=-1, where="kernel")["kernel"]
        np.testing.assert_array_equal(np.asarray(q.dequantize()[i]), np.asarray(alone.dequantize()))
        book = quant.kmeans({"kernel": w[i]}, 3, where="kernel")["kernel"]
        np.testing.assert_array_equal(np.asarray(c.centroids[i, 0, 0]), np.asarray(book.centroids))
        np.testing.assert_array_equal(np.asarray(c.dequantize()[i]), np.asarray(book.dequantize()))
    # rules give per-leaf settings (first match wins)
    tree = {"a": {"kernel": w}, "b": {"kernel": w[0]}}
    out = quant.uniform(
        tree, [("a/", 8), ("b/", 4)], stacked=[("a/", 0), (".*", None)], where="kernel"
    )
    assert out["a"]["kernel"].bits == 8 and out["a"]["kernel"].scale.shape == (4, 1, 1)
    assert out["b"]["kernel"].bits == 4 and out["b"]["kernel"].scale.shape == (1, 1)


def test_per_slice_codebook_gradient_is_per_slice_sum():
    w = np.random.default_rng(6).standard_normal((2, 8, 4)).astype(np.float32)
    c = quant.kmeans({"k": w}, 2, stacked=0, where="k")["k"]
    g = np.random.default_rng(7).standard_normal(w.shape).astype(np.float32)
    grad = jax.grad(lambda cents: jnp.sum(c.replace(centroids=cents).dequantize() * g))(c.centroids)
    idx = np.asarray(c.indices)
    for i in range(2):
        for j in range(c.centroids.shape[-1]):
            np.testing.assert_allclose(float(grad[i, 0, 0, j]), g[i][idx[i] == j].sum(), rtol=1e-5)


def test_issue_17_bad_inputs():
    w = np.ones((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"params leaf 'e'.*no entries"):
        quant.uniform({"e": np.ones((0, 3), np.float32)}, 8, where="e")
    with pytest.raises(ValueError, match=r"'x'.*no entries"):
        quant.fake_quant(np.ones((0, 2), np.float32), 8)
    with pytest.raises(ValueError, match="scale must be positive"):
        quant.fake_quant(w, 8, scale=0.0)
    with pytest.raises(ValueError, match="scale must be positive"):
        quant.fake_quant(w, 8, scale=-1.0)
    for bad in (None, "8", 4.5, {"w": "8"}):
        with pytest.raises(TypeError, match="bits"):
            quant.uniform({"w": w}, bad)
        with pytest.raises(TypeError, match="bits"):
            quant.fake_quant_tree({"w": w}, bad)
    # per tensor, the scale keeps the values' rank (documented)
    assert quant.uniform({"w": w}, 8)["w"].scale.shape == (1, 1)
    with pytest.raises(ValueError, match="group_size"):
        quant.uniform({"w": w}, 8, group_size=0)
    with pytest.raises(ValueError, match="stacked axis"):
        quant.uniform({"w": np.ones((2, 3, 3), np.float32)}, 8, axis=0, stacked=0)


def test_inputs_untouched_and_jit_of_dequantize():
    w = np.random.default_rng(8).standard_normal((8, 6)).astype(np.float32)
    before = w.copy()
    q = quant.uniform({"k": w}, 4, axis=-1, group_size=4, pack=True, where="k")
    np.testing.assert_array_equal(w, before)
    chex.assert_trees_all_equal(jax.jit(quant.dequantize)(q), quant.dequantize(q))
