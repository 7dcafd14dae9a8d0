"""Every pruning technique treats each stacked slice as a layer (models of tests/model_zoo.py).

References slice the stacked axis with numpy and rank each slice on its own.
"""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from prune_reference import top_k_reference

from jaxrm import prune
from jaxrm import tree as jtree
from tests import model_zoo as zoo

L = zoo.LAYERS


def _scaled_stack():
    """The Linen scanned stack with per-layer weight scales 4, 2, 1 (as in issue 10's report)."""
    params = zoo.linen_stack_params()
    scale = jnp.asarray([4.0, 2.0, 1.0]).reshape(L, 1)

    def rescale(path, x):
        if path.startswith("layers/") and x.ndim >= 2:
            return x * scale.reshape((L,) + (1,) * (x.ndim - 1))
        return x

    return jtree.map_selected(rescale, params, jtree.arrays)


def _layer_counts_ref(x, mask, s, axis=0):
    xs, ms = np.moveaxis(np.asarray(x), axis, 0), np.moveaxis(np.asarray(mask), axis, 0)
    for xl, ml in zip(xs, ms):
        k = round((1 - s) * xl.size)
        assert ml.sum() == k
        np.testing.assert_array_equal(ml, top_k_reference([xl], k)[0])


@pytest.mark.parametrize("boxed", [True, False])
def test_linen_scanned_layer_scope_counts_per_slice(boxed):
    params = _scaled_stack()
    if not boxed:
        params = nn.unbox(params)
    scores = prune.magnitude(params)
    m = nn.unbox(prune.masks(scores, 0.6))
    plain = nn.unbox(scores)
    for path, x in jtree.leaves_with_paths(plain):
        mask = dict(jtree.leaves_with_paths(m, keep_none=True))[path]
        if path.startswith("layers/") and path.endswith("kernel"):
            _layer_counts_ref(x, mask, 0.6)  # the last (smallest) layer keeps its share
        elif path == "head/kernel":
            assert np.asarray(mask).sum() == round(0.4 * x.size)
        else:
            assert mask is None, path  # biases, norm scales, attention biases stay dense


def test_nnx_scanned_counts_per_slice_and_stacked_override():
    state = nnx.state(zoo.nnx_stack(), nnx.Param)
    m = prune.masks(prune.magnitude(state), 0.75)
    pure_m, pure_x = nnx.to_pure_dict(m), nnx.to_pure_dict(state)
    for path in ("attn/query/kernel", "attn/out/kernel", "up/kernel", "down/kernel"):
        mask = dict(jtree.leaves_with_paths(pure_m))[path]
        x = np.abs(dict(jtree.leaves_with_paths(pure_x))[path])
        _layer_counts_ref(x, mask, 0.75)
    # Without metadata and with stacked=() the (L, d, d) kernel is one tensor again.
    whole = prune.masks(prune.magnitude(pure_x), 0.75, where="up/kernel", stacked=())
    k = whole["up"]["kernel"]
    assert np.asarray(k).sum() == round(0.25 * k.size)


def test_stacked_keyword_on_a_plain_dict_and_its_errors():
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((5, 3, 6))).astype(np.float32)
    x = x * (10.0 ** np.arange(6, dtype=np.float32)).reshape(1, 1, 6)  # layers on axis 2
    m = prune.masks({"w": x}, 0.5, stacked=[("w", 2)])
    _layer_counts_ref(x, m["w"], 0.5, axis=2)
    with pytest.raises(ValueError, match=r"stacked at leaf 'w'.*out of range"):
        prune.masks({"w": x}, 0.5, stacked=3)
    with pytest.raises(ValueError, match=r"stacked at leaf 'b'"):
        prune.masks({"b": np.ones(4, np.float32)}, 0.5, where="b", stacked=0)


def test_global_scope_is_global_over_slices():
    params = nn.unbox(_scaled_stack())
    scores = prune.magnitude(params)
    m = prune.masks(scores, 0.9, scope="global", where="Dense_0/kernel")
    x = np.asarray(scores["layers"]["Dense_0"]["kernel"])
    got = np.asarray(m["layers"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(got, top_k_reference([x], round(0.1 * x.size))[0])


def test_channel_and_nm_defaults_follow_each_framework():
    # Equinox Linear (out, in): channels are rows, N:M groups run along `in`.
    mlp = eqx.filter(zoo.eqx_mlp(), eqx.is_array)
    scores = prune.magnitude(mlp)
    ch = prune.masks(scores, 0.5, pattern=prune.channels())
    w = np.asarray(ch.layers[1].weight)  # (8, 8)
    assert np.all(w.all(axis=1) | ~w.any(axis=1)) and w.all(axis=1).sum() == 4
    norms = (np.asarray(mlp.layers[1].weight, np.float64) ** 2).sum(axis=1)
    np.testing.assert_array_equal(w.all(axis=1), top_k_reference([norms], 4)[0])
    nm = prune.masks(scores, 0.5, pattern=prune.nm(2, 4), where="layers/1/weight")
    g = np.asarray(nm.layers[1].weight).reshape(8, 2, 4)
    assert np.all(g.sum(axis=-1) == 2)
    # Flax HWIO conv: channels are whole output filters (last axis), N:M along I.
    variables = zoo.resnet_variables()
    conv = prune.masks(prune.magnitude(variables), 0.5, pattern=prune.channels(),
                       where="Conv_0/kernel")["params"]["Conv_0"]["kernel"]
    c = np.asarray(conv)  # (3, 3, 4, 8)
    per_filter = c.reshape(-1, 8)
    assert np.all(per_filter.all(axis=0) | ~per_filter.any(axis=0))
    assert per_filter.all(axis=0).sum() == 4
    nmc = prune.masks(prune.magnitude(variables), 0.5, pattern=prune.nm(2, 4),
                      where="Conv_1/kernel")["params"]["Conv_1"]["kernel"]
    assert np.all(np.asarray(nmc).reshape(3, 3, 2, 4, 8).sum(axis=3) == 2)


def test_attention_kernels_and_stacked_channels():
    params = zoo.vit_params()
    scores = prune.magnitude(params)
    m = prune.masks(scores, 0.5, pattern=prune.nm(2, 4), where="Attention.*kernel")
    q = np.asarray(m["MultiHeadDotProductAttention_0"]["query"]["kernel"])  # (emb, heads, hd)
    assert np.all(q.reshape(4, 4, *q.shape[1:]).sum(axis=1) == 2)  # groups along emb
    o = np.asarray(m["MultiHeadDotProductAttention_0"]["out"]["kernel"])  # (heads, hd, emb)
    assert np.all(o.reshape(o.shape[0], 2, 4, o.shape[2]).sum(axis=2) == 2)  # along hd
    # Channels of a scanned kernel: each layer drops its own output features.
    stack = nn.unbox(_scaled_stack())
    ch = prune.masks(prune.magnitude(stack), 0.5, pattern=prune.channels(), where="Dense_0")
    k = np.asarray(ch["layers"]["Dense_0"]["kernel"])  # (L, in, out)
    x = np.asarray(stack["layers"]["Dense_0"]["kernel"], np.float64)
    for layer in range(L):
        kept = k[layer].all(axis=0)
        assert np.all(kept | ~k[layer].any(axis=0)) and kept.sum() == zoo.MLP // 2
        np.testing.assert_array_equal(
            kept, top_k_reference([(x[layer] ** 2).sum(axis=0)], zoo.MLP // 2)[0]
        )


def test_fused_kv_tensor_prunes_k_and_v_apart():
    rng = np.random.default_rng(1)
    kv = np.abs(rng.standard_normal((2, 1, 8, 4))).astype(np.float32)
    kv[0] *= 10.0  # K much larger than V: ranked together, V would be pruned away
    t = {"attn": {"kv_einsum": {"w": kv}}}
    m = prune.masks(t, 0.5)
    _layer_counts_ref(kv, m["attn"]["kv_einsum"]["w"], 0.5)


def test_threshold_per_slice_and_non_finite_entries():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((L, 6, 5)) * np.asarray([1.0, 10.0, 100.0]).reshape(L, 1, 1))
    x = x.astype(np.float32)
    params = {"layers": {"Dense_0": {"kernel": x}}}
    m = np.asarray(prune.threshold(params, 1.0)["layers"]["Dense_0"]["kernel"])
    for layer in range(L):
        np.testing.assert_array_equal(m[layer], np.abs(x[layer]) > x[layer].std())
    y = x[0].copy()
    y[0, 0], y[1, 1] = np.nan, np.inf
    got = np.asarray(prune.threshold({"w": y}, 0.5)["w"])
    finite = y[np.isfinite(y)]
    want = np.abs(y) > 0.5 * finite.std()
    np.testing.assert_array_equal(got, want)
    assert not got[0, 0] and got[1, 1] and got.sum() > 1


def test_erk_and_uniform_treat_slices_as_layers():
    stacked = {"layers": {"Dense_0": {"kernel": jnp.zeros((L, 16, 32))}},
               "head": {"kernel": jnp.zeros((32, 4))}}
    apart = {**{f"l{i}": {"kernel": jnp.zeros((16, 32))} for i in range(L)},
             "head": {"kernel": jnp.zeros((32, 4))}}
    a, b = prune.erk(stacked, 0.8), prune.erk(apart, 0.8)
    assert a["layers"]["Dense_0"]["kernel"] == pytest.approx(b["l0"]["kernel"])
    assert a["head"]["kernel"] == pytest.approx(b["head"]["kernel"])
    assert prune.uniform(stacked, 0.3)["layers"]["Dense_0"]["kernel"] == 0.3
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="power"):
            prune.erk(stacked, 0.8, power=bad)
    with pytest.raises(TypeError, match="power"):
        prune.erk(stacked, 0.8, power="1")
    # A large finite power no longer overflows.
    assert 0.0 <= prune.erk(apart, 0.8, power=500.0)["head"]["kernel"] < 1.0


def test_per_leaf_settings_for_sparsity_and_pattern():
    params = nn.unbox(_scaled_stack())
    scores = prune.magnitude(params)
    m = prune.masks(scores, [("Attention", 0.25), ("Dense_", 0.75)], where="layers/.*kernel")
    q = m["layers"]["MultiHeadDotProductAttention_0"]["query"]["kernel"]
    d = m["layers"]["Dense_1"]["kernel"]
    assert np.asarray(q[0]).mean() == pytest.approx(0.75)
    assert np.asarray(d[0]).mean() == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"sparsity: no rule matches leaf 'layers/Dense_0"):
        prune.masks(scores, [("Attention", 0.25)], where="layers/.*kernel")
    pm = prune.masks(scores, 0.5, where="Dense_1/kernel",
                     pattern=lambda p, x: prune.nm(1, 4) if "Dense_1" in p else None)
    assert np.all(np.asarray(pm["layers"]["Dense_1"]["kernel"]).reshape(L, 4, 4, -1)
                  .sum(axis=2) == 1)


def test_negative_scores_point_at_magnitude():
    params = nn.unbox(zoo.vit_params())
    with pytest.raises(ValueError, match=r"head/kernel.*prune\.magnitude"):
        prune.masks(params, 0.5, where="head/kernel")


def test_kept_count_is_the_same_eagerly_and_under_jit():
    x = {"w": jnp.arange(1.0, 11.0)}
    where = "w"
    for s in (0.85, 0.15, 0.35, 0.05, 0.45):
        eager = int(np.asarray(prune.masks(x, s, where=where)["w"]).sum())
        jitted = jax.jit(lambda x, s: prune.masks(x, s, where=where))(x, jnp.float32(s))
        assert int(np.asarray(jitted["w"]).sum()) == eager, s
    # Traced values out of range are clamped: NaN keeps all, >= 1 prunes all.
    f = jax.jit(lambda s: prune.masks(x, s, where=where)["w"].sum())
    assert int(f(jnp.float32(jnp.nan))) == 10 and int(f(jnp.float32(1.5))) == 0


def test_sparsify_on_a_scanned_stack_keeps_per_slice_targets():
    params = nn.unbox(_scaled_stack())
    opt = prune.sparsify(optax.sgd(0.0), optax.constant_schedule(1.0),
                         sparsity=[("Dense_0/kernel", 0.5), (".", 0.8)], where="layers/")
    state = opt.init(params)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, state = jax.jit(opt.update)(grads, state, params)
    new = optax.apply_updates(params, updates)
    masks = prune.masks_of(state)
    d0 = np.asarray(masks["layers"]["Dense_0"]["kernel"])
    d1 = np.asarray(masks["layers"]["Dense_1"]["kernel"])
    x0 = np.abs(np.asarray(params["layers"]["Dense_0"]["kernel"]))
    _layer_counts_ref(x0, d0, 0.5)
    for layer in range(L):
        assert d1[layer].sum() == round(0.2 * d1[layer].size)
    assert not bool(state.clamped)
    assert np.all(np.asarray(new["layers"]["Dense_0"]["kernel"])[~d0] == 0)
    # A schedule past 1 is clamped (everything pruned) and flagged, not silent.
    bad = prune.sparsify(optax.sgd(0.0), optax.constant_schedule(1.5), where="head/kernel")
    _, s2 = jax.jit(bad.update)(grads, bad.init(params), params)
    assert bool(s2.clamped) and not np.asarray(prune.masks_of(s2)["head"]["kernel"]).any()


def test_sparsify_first_masks_match_eager_masks_across_shapes_slices_and_patterns():
    """Per-leaf targets travel as one vector under jit (``RowCounts``); the masks of the
    first step must be ``prune.masks`` of the same weights, leaf by leaf: a stacked
    leaf, leaves of other row lengths and an N:M leaf in one tree."""
    rng = np.random.default_rng(3)
    params = {
        "stack": {"kernel": jnp.asarray(rng.normal(size=(3, 8, 16)), jnp.float32)},
        "a": {"kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)},
        "b": {"kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)},
        "c": {"kernel": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)},
        "nm": {"kernel": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)},
    }
    sparsity = [("stack", 0.3), ("a/", 0.6), ("b/", 0.1), ("c/", 0.45), ("nm", 0.5)]
    stacked = [("stack", (0,)), (".", ())]
    pattern = [("nm", prune.nm(2, 4)), (".", None)]
    opt = prune.sparsify(optax.sgd(0.0), optax.constant_schedule(1.0), sparsity=sparsity,
                         stacked=stacked, pattern=pattern)
    grads = jax.tree.map(jnp.zeros_like, params)
    _, state = jax.jit(opt.update)(grads, opt.init(params), params)
    got = prune.masks_of(state)
    want = prune.masks(prune.magnitude(params), sparsity, stacked=stacked, pattern=pattern)
    for name in params:
        np.testing.assert_array_equal(np.asarray(got[name]["kernel"]),
                                      np.asarray(want[name]["kernel"]), err_msg=name)


def test_row_counts_rows_are_each_leafs_counts_repeated():
    """The one-vector counts against ``kept_counts`` in exact rational arithmetic, for
    subsets and orders of leaves with 1 to 4 slices each."""
    from jaxrm.prune import _leaves

    rng = np.random.default_rng(0)
    slices = [1, 3, 2, 1, 4]
    units = [int(u) for u in rng.integers(1, 1000, len(slices))]
    s = [0.0, 0.35, 0.5, 0.05, 0.99]
    rc = _leaves.row_counts(jnp.asarray(s, jnp.float32), units, slices)
    exact = _leaves.kept_counts([float(np.float32(v)) for v in s], units)
    for leaves in ([0, 1, 2, 3, 4], [4, 2, 0], [3], [1, 3]):
        want = np.concatenate([np.full(slices[i], exact[i]) for i in leaves])
        np.testing.assert_array_equal(np.asarray(rc.rows(leaves)), want)
        sub = rc.subset(leaves)
        np.testing.assert_array_equal(np.asarray(sub.rows(list(range(len(leaves))))), want)
    for i in range(len(slices)):
        np.testing.assert_array_equal(np.asarray(rc[i]), np.full(slices[i], exact[i]))
