"""Exactness of masks: kept counts, kept entries are the top scores, ties, paths."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prune_reference import top_k_reference

from jaxrm import prune
from jaxrm.prune import _leaves, _masks, _select

shapes = st.lists(st.integers(1, 40), min_size=2, max_size=3).map(tuple)
sparsities = st.floats(0.0, 0.999, allow_nan=False)


def _tree(rng, shapes, ties=False):
    out = {}
    for i, sh in enumerate(shapes):
        if ties:
            out[f"w{i}"] = rng.integers(0, 7, size=sh).astype(np.float32)
        else:
            out[f"w{i}"] = np.abs(rng.standard_normal(sh)).astype(np.float32)
    return out


@settings(max_examples=20, deadline=None)
@given(st.lists(shapes, min_size=1, max_size=3), sparsities, st.booleans(), st.integers(0, 99))
def test_layer_scope_keeps_exact_top_counts(shape_list, s, ties, seed):
    scores = _tree(np.random.default_rng(seed), shape_list, ties)
    m = prune.masks(scores, s)
    for name, x in scores.items():
        k = round((1 - s) * x.size)
        assert m[name].dtype == jnp.bool_ and m[name].shape == x.shape
        assert int(np.asarray(m[name]).sum()) == k
        np.testing.assert_array_equal(np.asarray(m[name]), top_k_reference([x], k)[0])


@settings(max_examples=20, deadline=None)
@given(st.lists(shapes, min_size=1, max_size=3), sparsities, st.booleans(), st.integers(0, 99))
def test_global_scope_keeps_exact_top_counts(shape_list, s, ties, seed):
    scores = _tree(np.random.default_rng(seed), shape_list, ties)
    m = prune.masks(scores, s, scope="global")
    n = sum(x.size for x in scores.values())
    k = round((1 - s) * n)
    assert sum(int(np.asarray(v).sum()) for v in m.values()) == k
    ref = top_k_reference(list(scores.values()), k)
    for got, want in zip(m.values(), ref):
        np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("kind", ["normal", "ties", "nan", "signed_zero"])
def test_host_and_device_selection_agree(scope, kind):
    # On CPU the selection runs in numpy; elsewhere the radix selection runs on
    # the device. Both are forced here on the same inputs.
    rng = np.random.default_rng(1)
    scores = {
        "a": rng.standard_normal((70, 90)).astype(np.float32),
        "b": rng.standard_normal((300, 400)).astype(np.float32),
    }
    if kind == "ties":
        scores = {k: np.round(v * 2) for k, v in scores.items()}
    if kind == "nan":
        scores["a"][::3, ::2] = np.nan
    if kind == "signed_zero":
        scores["b"][:, :200] = 0.0
        scores["b"][:, 200:] = -0.0
    plan = _leaves.plan(scores, None)
    for s in (0.0, 0.3, 0.9, 0.97):
        sp = [s] * len(plan.picked)
        host = _masks.compute(plan, sp, scope, host=True)
        dev = _masks.compute(plan, sp, scope, host=False)
        arrays = plan.leaves
        if scope == "global":
            ref = top_k_reference(arrays, round((1 - s) * sum(a.size for a in arrays)))
        else:
            ref = [top_k_reference([a], round((1 - s) * a.size))[0] for a in arrays]
        for h, d, r in zip(host, dev, ref):
            np.testing.assert_array_equal(np.asarray(h), r)
            np.testing.assert_array_equal(np.asarray(d), r)


def test_ties_break_towards_lower_flat_index():
    scores = {"a": np.ones((2, 3), np.float32), "b": np.ones((3,), np.float32)}
    m = prune.masks(scores, 0.5, scope="global", where="a|b")
    # round(0.5 * 9) = 4 (round half to even) of 9 equal scores: the first 4 in
    # flattening order, all in leaf "a".
    np.testing.assert_array_equal(np.asarray(m["a"]).ravel(), [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(np.asarray(m["b"]), [0, 0, 0])


def test_large_leaf_uses_the_sampled_bracket_exactly():
    rng = np.random.default_rng(2)
    x = {"w": np.abs(rng.standard_normal((600, 500))).astype(np.float32) ** 3}
    for s in (0.5, 0.9, 0.999):
        m = prune.masks(x, s)
        k = round((1 - s) * x["w"].size)
        np.testing.assert_array_equal(np.asarray(m["w"]), top_k_reference([x["w"]], k)[0])


def test_unselected_leaves_are_none_and_where_is_honoured():
    rng = np.random.default_rng(3)
    params = {
        "Dense_0": {"kernel": rng.standard_normal((4, 5)), "bias": rng.standard_normal(5)},
        "Dense_1": {"kernel": rng.standard_normal((5, 2)), "bias": rng.standard_normal(2)},
    }
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    m = prune.masks(prune.magnitude(params), 0.5)
    assert m["Dense_0"]["bias"] is None and m["Dense_1"]["bias"] is None
    assert m["Dense_0"]["kernel"].shape == (4, 5)
    m = prune.masks(prune.magnitude(params), 0.5, where="Dense_1/kernel")
    assert m["Dense_0"]["kernel"] is None and m["Dense_1"]["kernel"] is not None


def test_per_leaf_sparsity_tree():
    rng = np.random.default_rng(4)
    params = {"a": rng.standard_normal((10, 10)), "b": rng.standard_normal((20, 5))}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    m = prune.masks(prune.magnitude(params), {"a": 0.25, "b": 0.75})
    assert int(m["a"].sum()) == 75 and int(m["b"].sum()) == 25


def test_traced_sparsity_under_jit_matches_eager():
    rng = np.random.default_rng(5)
    params = {"a": jnp.asarray(rng.standard_normal((30, 40)), jnp.float32)}
    f = jax.jit(lambda p, s: prune.masks(prune.magnitude(p), s))
    for s in (0.1, 0.5, 0.875):
        got = f(params, jnp.float32(s))
        want = prune.masks(prune.magnitude(params), s)
        np.testing.assert_array_equal(np.asarray(got["a"]), np.asarray(want["a"]))


def test_vmap_over_stacked_scores():
    rng = np.random.default_rng(6)
    stacked = jnp.asarray(rng.standard_normal((3, 8, 8)), jnp.float32)
    m = jax.vmap(lambda x: prune.masks({"w": x}, 0.5)["w"])(stacked)
    for i in range(3):
        np.testing.assert_array_equal(
            np.asarray(m[i]), top_k_reference([np.asarray(stacked[i])], 32)[0]
        )


def test_apply_zeroes_pruned_and_keeps_structure():
    rng = np.random.default_rng(7)
    params = {"k": jnp.asarray(rng.standard_normal((6, 6)), jnp.float32), "b": jnp.ones(6)}
    m = prune.masks(prune.magnitude(params), 0.5)
    pruned = prune.apply(params, m)
    chex.assert_trees_all_equal_shapes_and_dtypes(pruned, params)
    np.testing.assert_array_equal(
        np.asarray(pruned["k"]), np.where(np.asarray(m["k"]), np.asarray(params["k"]), 0)
    )
    np.testing.assert_array_equal(np.asarray(pruned["b"]), np.ones(6))


def test_inputs_are_not_mutated():
    rng = np.random.default_rng(8)
    params = {"k": rng.standard_normal((16, 16)).astype(np.float32)}
    before = params["k"].copy()
    scores = prune.magnitude(params)
    m = prune.masks(scores, 0.7, scope="global")
    prune.apply(params, m)
    prune.threshold(params, 1.0)
    np.testing.assert_array_equal(params["k"], before)
    np.testing.assert_array_equal(np.asarray(scores["k"]), np.abs(before))


def test_threshold_matches_numpy_rule():
    rng = np.random.default_rng(9)
    params = {"a": rng.standard_normal((50, 40)).astype(np.float32) * 0.3,
              "b": rng.standard_normal(40).astype(np.float32)}
    for q in (0.0, 0.5, 1.0, 2.0):
        m = prune.threshold(params, q)
        assert m["b"] is None
        w = params["a"].astype(np.float64)
        limit = q * np.std(w)
        want = np.abs(w) > limit
        got = np.asarray(m["a"])
        # Entries within float32 rounding of the limit may go either way.
        near = np.abs(np.abs(w) - limit) <= 1e-6 * max(limit, 1e-30)
        np.testing.assert_array_equal(got[~near], want[~near])


def test_equinox_module_through_filter():
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(6, 3, width_size=8, depth=2, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    m = prune.masks(prune.magnitude(params), 0.5, scope="global")
    kernels = [x for x in jax.tree_util.tree_leaves(m) if x is not None]
    assert len(kernels) == 3  # the three weight matrices; biases stay None
    n = sum(k.size for k in kernels)
    assert sum(int(np.asarray(k).sum()) for k in kernels) == round(0.5 * n)
    pruned = eqx.combine(prune.apply(params, m), static)
    assert pruned(jnp.ones(6)).shape == (3,)
    assert prune.summary(prune.apply(params, m), where=None).density == pytest.approx(0.5)


@pytest.mark.slow
def test_benchmark_scale_global_masks_are_exact_on_both_paths():
    rng = np.random.default_rng(10)
    scores = {f"l{i}": np.abs(rng.standard_normal((1000, 1000), dtype=np.float32))
              for i in range(20)}
    plan = _leaves.plan(scores, None)
    k = round(0.1 * 20_000_000)
    ref = top_k_reference(plan.leaves, k)
    for host in (True, False):
        got = _masks.compute(plan, [0.9] * 20, "global", host=host)
        for g, r in zip(got, ref):
            np.testing.assert_array_equal(np.asarray(g), r)


_device_rows = jax.jit(lambda rows, ks: _select.select(rows, ks, "layer", host=False))


@settings(max_examples=12, deadline=None)
@given(
    st.sampled_from([1, 3]),  # same-shape leaves, batched and cut back at data offsets
    st.sampled_from([1, 2]),  # rows per leaf (a stacked leaf ranks each row alone)
    st.sampled_from([5, 64]),
    st.sampled_from(["normal", "ties", "nan"]),
    st.integers(0, 2**32 - 1),
)
def test_device_rows_of_same_shape_leaves_match_brute_force(leaves, rows, n, kind, seed):
    rng = np.random.default_rng(seed)
    units = [rng.standard_normal((rows, n)).astype(np.float32) for _ in range(leaves)]
    if kind == "ties":
        units = [np.round(u) for u in units]
    if kind == "nan":
        for u in units:
            u[rng.random(u.shape) < 0.3] = np.nan
    ks = [rng.integers(0, n + 1, rows).astype(np.int32) for _ in range(leaves)]
    got = _device_rows(units, ks)
    for u, k, g in zip(units, ks, got):
        want = np.stack([top_k_reference([row], int(kk))[0] for row, kk in zip(u, k)])
        np.testing.assert_array_equal(np.asarray(g), want)


_device_select = jax.jit(
    lambda units, ks, scope, common: _select.select(units, ks, scope, host=False, common=common),
    static_argnames=("scope", "common"),
)


@pytest.mark.parametrize("common", [-1.0, 0.0, 0.5])
@pytest.mark.parametrize("kept", ["above", "in common", "in ties"])
def test_device_selection_over_chunks_with_a_frequent_score(common, kept):
    # Rows longer than a histogram chunk (several chunks and a remainder); most
    # entries are the frequent score (counted apart from the scatter) and many tie
    # at another value, so the k-th falls above, in or among the ties of either.
    rng = np.random.default_rng(7)
    n = 2 * 65536 + 777
    rows = np.abs(rng.standard_normal((2, n))).astype(np.float32)
    rows[rng.random(rows.shape) < 0.7] = common
    tie = np.float32(0.25)
    rows[rng.random(rows.shape) < 0.1] = tie
    n_common = (rows == common).sum(axis=1)
    above_common = (rows > common).sum(axis=1)
    above_tie = (rows > tie).sum(axis=1)
    ks = {
        "above": above_common // 3,
        "in common": above_common + n_common // 2,
        "in ties": above_tie + (rows == tie).sum(axis=1) // 2,
    }[kept].astype(np.int32)
    got = _device_select([rows], [ks], "layer", common)[0]
    want = np.stack([top_k_reference([r], int(k))[0] for r, k in zip(rows, ks)])
    np.testing.assert_array_equal(np.asarray(got), want)
    # the same scores as leaves ranked together: flat indices run across leaves
    leaves = [rows[0], rows[1, :1000], rows[1, 1000:]]
    k = int(ks.sum())
    got = _device_select(leaves, k, "global", common)
    for g, w in zip(got, top_k_reference(leaves, k)):
        np.testing.assert_array_equal(np.asarray(g), w)


def test_device_rows_batched_path_matches_brute_force(monkeypatch):
    # GPU and TPU batch the rows with vmap (the loop over chunks, the tie cond and the
    # row's dynamic slices all batched); run that branch here against brute force.
    monkeypatch.setattr(_select.jax, "default_backend", lambda: "gpu")
    rng = np.random.default_rng(3)
    rows = np.abs(rng.standard_normal((3, 65536 + 999))).astype(np.float32)
    rows[rng.random(rows.shape) < 0.6] = -1.0
    rows[rng.random(rows.shape) < 0.1] = 0.5
    ks = np.array([10, (rows[1] > -1).sum() + 500, (rows[2] > 0.5).sum() + 300], np.int32)
    got = jax.jit(lambda r, k: _select.select([r], [k], "layer", host=False, common=-1.0))(
        rows, ks)[0]
    want = np.stack([top_k_reference([r], int(k))[0] for r, k in zip(rows, ks)])
    np.testing.assert_array_equal(np.asarray(got), want)
