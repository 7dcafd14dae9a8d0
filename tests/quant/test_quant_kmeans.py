"""k-means weight sharing: brute-force Lloyd, inits, masks, rules, gradients, fine-tuning."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrm import quant


def brute_lloyd(x, centroids, iters):
    """Textbook Lloyd with an n x k distance matrix (float64).

    Ties go to the lower centroid (argmin's first index); an empty cluster
    keeps its centroid; stops when the assignment repeats.
    """
    x = np.asarray(x, np.float64).ravel()
    c = np.asarray(centroids, np.float64).copy()
    prev = None
    for _ in range(iters):
        labels = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        if prev is not None and np.array_equal(labels, prev):
            break
        for j in range(c.size):
            if np.any(labels == j):
                c[j] = x[labels == j].mean()
        prev = labels
    labels = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
    return c, labels


def _inertia(x, cb):
    return float(np.sum((np.asarray(x, np.float64) - np.asarray(cb.dequantize(), np.float64)) ** 2))


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 4),
    st.sampled_from([(9, 7), (40, 3), (1, 64)]),
    st.sampled_from(["linear", "density"]),
)
def test_matches_brute_force_lloyd(seed, bits, shape, init):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 10)).astype(np.float32)
    k = 2**bits
    cb = quant.kmeans({"w": x}, bits, init=init, iters=500)["w"]
    s = np.sort(x.ravel().astype(np.float64))
    if init == "linear":
        c0 = np.linspace(s[0], s[-1], k)
    else:  # smallest w with P(W <= w) >= (j + 1/2) / k, found by scanning
        c0 = np.array(
            [s[np.argmax(np.arange(1, s.size + 1) / s.size >= (j + 0.5) / k)] for j in range(k)]
        )
    c, labels = brute_lloyd(x, c0, 500)
    np.testing.assert_allclose(np.asarray(cb.centroids), c, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(cb.indices).ravel(), labels)
    assert cb.indices.dtype == jnp.uint8 and cb.bits == bits and cb.mask is None


@pytest.mark.parametrize("bits", [3, 7])  # 7 bits assigns by binary search, 3 by comparisons
def test_fixed_point_properties(bits):
    x = np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32)
    cb = quant.kmeans({"w": x}, bits, iters=100_000)["w"]
    c = np.asarray(cb.centroids, np.float64)
    idx = np.asarray(cb.indices)
    assert c.size == 2**bits and np.all(np.diff(c) >= 0)
    for j in np.unique(idx):  # each centroid is the mean of its members
        np.testing.assert_allclose(c[j], x[idx == j].astype(np.float64).mean(), rtol=1e-5)
    dist = np.abs(x[..., None].astype(np.float64) - c)  # and each weight is nearest to its own
    np.testing.assert_allclose(dist.min(-1), np.take_along_axis(dist, idx[..., None], -1)[..., 0])


def test_iters_zero_gives_each_init():
    x = np.random.default_rng(0).standard_normal((30, 20)).astype(np.float32)
    s = np.sort(x.ravel())
    k = 8
    lin = quant.kmeans({"w": x}, 3, init="linear", iters=0)["w"]
    np.testing.assert_allclose(
        np.asarray(lin.centroids), np.linspace(float(s[0]), float(s[-1]), k), rtol=1e-6, atol=1e-7
    )
    den = np.asarray(quant.kmeans({"w": x}, 3, init="density", iters=0)["w"].centroids)
    for j, c in enumerate(den):  # c = F^-1((j + 1/2) / k)
        p = (j + 0.5) / k
        assert np.mean(s <= c) >= p and np.mean(s < c) < p
    key = jax.random.key(0)
    rnd = np.asarray(quant.kmeans({"w": x}, 3, init="random", iters=0, key=key)["w"].centroids)
    assert len(set(rnd.tolist())) == k and set(rnd.tolist()) <= set(s.tolist())
    again = quant.kmeans({"w": x}, 3, init="random", iters=0, key=key)["w"].centroids
    np.testing.assert_array_equal(rnd, np.asarray(again))
    other = quant.kmeans({"w": x}, 3, init="random", iters=0, key=jax.random.key(1))["w"]
    assert not np.array_equal(rnd, np.asarray(other.centroids))
    # Raw uint32 keys work as well.
    raw = quant.kmeans({"w": x}, 3, init="random", iters=0, key=jax.random.PRNGKey(0))["w"]
    assert set(np.asarray(raw.centroids).tolist()) <= set(s.tolist())


def test_kmeanspp_picks_one_point_per_separated_cluster():
    rng = np.random.default_rng(0)
    centers = np.arange(8) * 1000.0
    x = (centers[:, None] + rng.standard_normal((8, 50)) * 0.01).astype(np.float32)
    for seed in range(5):
        cb = quant.kmeans({"w": x}, 3, init="kmeans++", iters=0, key=jax.random.key(seed))["w"]
        c = np.asarray(cb.centroids)
        assert set(c.tolist()) <= set(x.ravel().tolist())
        # D^2 sampling makes a second pick in an already covered cluster ~1e-10 likely.
        np.testing.assert_array_equal(np.round(c / 1000.0), np.arange(8))
    a = quant.kmeans({"w": x}, 3, init="kmeans++", key=jax.random.key(7))
    b = quant.kmeans({"w": x}, 3, init="kmeans++", key=jax.random.key(7))
    chex.assert_trees_all_equal(a, b)


def test_random_inits_use_a_stream_per_leaf():
    x = np.random.default_rng(0).standard_normal((10, 10)).astype(np.float32)
    out = quant.kmeans({"a": x, "b": x}, 2, init="random", iters=0, key=jax.random.key(0))
    assert not np.array_equal(np.asarray(out["a"].centroids), np.asarray(out["b"].centroids))


def test_masked_entries_take_no_cluster_and_decode_to_zero():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 10)).astype(np.float32)
    keep = rng.random(x.shape) > 0.6
    x_pruned = np.where(keep, x, 0.0).astype(np.float32)
    params = {"w": x_pruned, "v": x, "b": np.ones(10, np.float32)}
    masks = {"w": keep, "v": None, "b": None}
    out = quant.kmeans(params, 2, masks=masks, iters=500)
    cb = out["w"]
    dec = np.asarray(cb.dequantize())
    np.testing.assert_array_equal(dec[~keep], 0.0)
    np.testing.assert_array_equal(np.asarray(cb.indices)[~keep], 0)
    np.testing.assert_array_equal(np.asarray(cb.mask), keep)
    # Centroids come from the unpruned weights alone (the zeros would pull them in).
    u = x[keep]
    c, labels = brute_lloyd(u, np.linspace(u.min(), u.max(), 4), 500)
    np.testing.assert_allclose(np.asarray(cb.centroids), c, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(cb.indices)[keep], labels)
    assert out["v"].mask is None and out["b"] is params["b"]
    np.testing.assert_array_equal(params["w"], x_pruned)  # inputs untouched


def test_empty_cluster_keeps_its_centroid():
    x = np.array([[0.0, 0.1, 0.2], [9.8, 9.9, 10.0]], np.float32)
    cb = quant.kmeans({"w": x}, 2)["w"]  # linear init 0, 3.33, 6.67, 10: the middle two empty
    c = np.asarray(cb.centroids, np.float64)
    np.testing.assert_allclose(c, [0.1, 10.0 / 3, 20.0 / 3, 9.9], rtol=1e-6)
    ref, labels = brute_lloyd(x, np.linspace(0, 10, 4), 100)
    np.testing.assert_allclose(c, ref, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(cb.indices).ravel(), labels)


def test_fewer_distinct_values_than_clusters():
    x = np.array([[1.5, -2.0, 1.5], [0.25, -2.0, 0.25]], np.float32)
    cb = quant.kmeans({"w": x}, 4)["w"]
    np.testing.assert_array_equal(np.asarray(cb.centroids), [-2.0, 0.25, 1.5])
    np.testing.assert_array_equal(np.asarray(cb.dequantize()), x)
    none_kept = quant.kmeans({"w": x}, 4, masks={"w": np.zeros(x.shape, bool)})["w"]
    np.testing.assert_array_equal(np.asarray(none_kept.centroids), [0.0])
    np.testing.assert_array_equal(np.asarray(none_kept.dequantize()), 0.0)


def test_bits_per_leaf_and_index_dtypes():
    rng = np.random.default_rng(0)
    params = {
        "conv": {"kernel": rng.standard_normal((3, 3, 8, 16)).astype(np.float32)},
        "fc": {"kernel": rng.standard_normal((64, 32)).astype(np.float32)},
    }
    out = quant.kmeans(params, {"conv": {"kernel": 9}, "fc": {"kernel": 5}}, iters=20)
    assert out["conv"]["kernel"].indices.dtype == jnp.uint16
    assert out["fc"]["kernel"].indices.dtype == jnp.uint8
    assert out["fc"]["kernel"].centroids.shape == (32,)
    assert out["conv"]["kernel"].bits == 9 and out["fc"]["kernel"].bits == 5
    out2 = quant.kmeans(params, lambda path, leaf: 8 if leaf.ndim == 4 else 5, iters=20)
    assert (out2["conv"]["kernel"].bits, out2["fc"]["kernel"].bits) == (8, 5)
    chex.assert_trees_all_equal_shapes_and_dtypes(quant.dequantize(out), params)


def test_dtype_preserved_and_jit_vmap_of_decoding():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 16, 8)), jnp.bfloat16)
    cb = quant.kmeans({"w": x}, 3)["w"]
    assert cb.centroids.dtype == jnp.float32 and cb.dequantize().dtype == jnp.bfloat16
    stacked = jax.jit(jax.vmap(lambda i: cb.replace(indices=i).dequantize()))(cb.indices)
    np.testing.assert_array_equal(np.asarray(stacked), np.asarray(cb.dequantize()))


def test_centroid_gradient_is_grouped_sum():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 9)).astype(np.float32)
    keep = rng.random(x.shape) > 0.3
    g = rng.standard_normal(x.shape).astype(np.float32)
    cb = quant.kmeans({"w": x}, 3, masks={"w": keep})["w"]
    grad = jax.grad(lambda c: jnp.sum(cb.replace(centroids=c).dequantize() * g))(cb.centroids)
    idx = np.asarray(cb.indices)
    expected = np.bincount(idx[keep], weights=g[keep].astype(np.float64), minlength=8)
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-6)


def test_centroid_fine_tuning_with_optax():
    rng = np.random.default_rng(0)
    w_true = rng.standard_normal((16, 4)).astype(np.float32)
    x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
    y = x @ w_true
    params = {"w": w_true + 0.3 * rng.standard_normal(w_true.shape).astype(np.float32),
              "b": jnp.zeros(4)}
    q = quant.kmeans(params, 2)

    def loss(train, frozen):
        p = quant.dequantize(quant.combine(train, frozen))
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    train, frozen = quant.partition(q)
    assert train["w"].indices is None and frozen["w"].centroids is None
    assert frozen["b"] is None and train["b"] is q["b"]
    # Each centroid's gradient is the sum of its members' gradients in the dense model.
    grads = jax.grad(loss)(train, frozen)
    dense_grad = jax.grad(
        lambda w: jnp.mean((x @ w + q["b"] - y) ** 2)
    )(q["w"].dequantize())
    idx = np.asarray(q["w"].indices)
    expected = np.bincount(idx.ravel(), weights=np.asarray(dense_grad, np.float64).ravel(),
                           minlength=4)
    np.testing.assert_allclose(np.asarray(grads["w"].centroids), expected, rtol=1e-4, atol=1e-6)

    opt = optax.adam(0.05)
    state = opt.init(train)

    @jax.jit
    def step(train, state):
        g = jax.grad(loss)(train, frozen)
        updates, state = opt.update(g, state, train)
        return optax.apply_updates(train, updates), state

    for _ in range(400):
        train, state = step(train, state)
    tuned = quant.combine(train, frozen)
    np.testing.assert_array_equal(np.asarray(tuned["w"].indices), idx)  # indices stay fixed
    assert isinstance(tuned["w"], quant.Codebook) and tuned["w"].bits == 2

    # With the indices fixed the model is linear in (centroids, bias): least squares
    # gives the best loss that fine-tuning can reach.
    xn = np.asarray(x, np.float64)
    cols = [np.stack([xn @ (idx[:, o] == j) for j in range(4)], 1) for o in range(4)]
    design = np.zeros((xn.shape[0] * 4, 8))
    for o in range(4):
        design[o::4, :4] = cols[o]
        design[o::4, 4 + o] = 1.0
    target = np.asarray(y, np.float64).ravel()
    sol = np.linalg.lstsq(design, target, rcond=None)[0]
    best = np.mean((design @ sol - target) ** 2)
    assert float(loss(train, frozen)) <= best * 1.01 + 1e-6
    np.testing.assert_allclose(np.asarray(train["w"].centroids), sol[:4], rtol=1e-2, atol=1e-3)

    # optax.masked with trainable() freezes everything but the centroids.
    only_c, rest = quant.partition(q, centroids_only=True)
    assert only_c["b"] is None and rest["b"] is q["b"]
    mask = quant.trainable(q, centroids_only=True)
    assert mask["w"].centroids is True and mask["w"].indices is False and mask["b"] is False
    masked = optax.masked(optax.sgd(1.0), mask)
    updates, _ = masked.update(
        jax.tree.map(jnp.ones_like, train), masked.init(train), train
    )
    np.testing.assert_array_equal(np.asarray(updates["w"].centroids), -1.0)
    np.testing.assert_array_equal(np.asarray(updates["b"]), 1.0)  # not transformed


def test_bad_input():
    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="bits"):
        quant.kmeans({"w": w}, 0)
    with pytest.raises(ValueError, match="bits at leaf 'w'"):
        quant.kmeans({"w": w}, {"w": 17})
    with pytest.raises(ValueError, match="init"):
        quant.kmeans({"w": w}, 2, init="uniform")
    with pytest.raises(ValueError, match="needs a key"):
        quant.kmeans({"w": w}, 2, init="random")
    with pytest.raises(ValueError, match="iters"):
        quant.kmeans({"w": w}, 2, iters=-1)
    bad = w.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"params leaf 'layer/w'.*NaN or Inf"):
        quant.kmeans({"layer": {"w": bad}}, 2)
    keep = np.ones(w.shape, bool)
    keep[0, 0] = False
    quant.kmeans({"w": bad}, 2, masks={"w": keep})  # a pruned NaN is fine
    with pytest.raises(ValueError, match=r"masks does not have the structure.*'v'"):
        quant.kmeans({"w": w, "v": w}, 2, masks={"w": keep})
    with pytest.raises(ValueError, match=r"masks at leaf 'w' has shape"):
        quant.kmeans({"w": w}, 2, masks={"w": np.ones((2, 2), bool)})
    with pytest.raises(TypeError, match=r"masks at leaf 'w'.*bool"):
        quant.kmeans({"w": w}, 2, masks={"w": np.ones(w.shape, np.float32)})
    with pytest.raises(TypeError, match=r"'n'.*int32"):
        quant.kmeans({"n": np.ones((3, 3), np.int32)}, 2, where="n")
    with pytest.raises(TypeError, match="traced"):
        jax.jit(lambda p: quant.kmeans(p, 2))({"w": w})
