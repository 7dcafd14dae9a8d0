"""prune.shrink: the smaller model computes what the masked-and-silenced model does."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from structural_models import MLP, Attention, Concat, FusedAttention, ResNet, Scanned

from jaxrm import prune
from jaxrm import tree as jtree

KEY = jax.random.key(0)


def random_variables(model, x, seed=0):
    """Variables of ``model`` filled with numpy draws (no init run; variances positive)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, KEY, x)

    def draw(kp, s):
        v = rng.normal(size=s.shape).astype(np.float32)
        return jnp.asarray(np.abs(v) + 0.5 if jtree.path_str(kp).endswith("var") else v)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def nnx_random(ctor, seed=0):
    """``(graphdef, state)`` of an NNX module built abstractly, filled with numpy draws."""
    rng = np.random.default_rng(seed)
    graphdef, abstract = nnx.split(nnx.eval_shape(ctor))
    draw = lambda s: jnp.asarray(rng.normal(size=s.shape).astype(np.float32))
    return graphdef, jax.tree.map(draw, abstract)


def half_keep(gs, seed=1):
    rng = np.random.default_rng(seed)
    return prune.group_keep([rng.random(g.size) for g in gs], 0.5)


def check_exact(model, x, rebuild, seed=0):
    variables = random_variables(model, x, seed)
    gs = prune.groups(model.apply, variables, x)
    keep = half_keep(gs)
    masked = prune.apply(variables, prune.group_masks(variables, gs, keep))
    small, sizes, shapes = prune.shrink(variables, gs, keep)
    want = jax.jit(model.apply)(masked, x)
    got = jax.jit(rebuild(sizes, gs, keep).apply)(small, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Every changed leaf lost exactly the positions its members' removed channels own.
    removed = {}
    for g, k in zip(gs, keep):
        for (path, axis), index in zip(g.members, g.index):
            removed.setdefault((path, axis, g.layer), set()).update(index[~np.asarray(k)].ravel())
    leaves = dict(jtree.leaves_with_paths(variables))
    for (path, axis, _), gone in removed.items():
        assert shapes[path][axis] == leaves[path].shape[axis] - len(gone), path
    return variables, gs, keep, small, sizes


def test_mlp_chain():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5)), jnp.float32)
    check_exact(MLP((16, 8)), x,
                lambda s, g, k: MLP((s["params/Dense_0"][0], s["params/Dense_1"][0])))


def test_residual_cnn_with_batchnorm_and_its_running_statistics():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 6, 3)), jnp.float32)
    variables, _gs, _keep, small, sizes = check_exact(
        ResNet(8, 6), x,
        lambda s, g, k: ResNet(s["params/Conv_0"][0], s["params/Conv_1"][0]))
    assert sizes["params/Conv_0"] == (4,) and sizes["params/Conv_1"] == (3,)
    for i in range(3):
        c = small["params"][f"BatchNorm_{i}"]["scale"].shape
        assert small["batch_stats"][f"BatchNorm_{i}"]["mean"].shape == c
        assert small["batch_stats"][f"BatchNorm_{i}"]["var"].shape == c
    # The inputs are left as they were.
    assert variables["params"]["Conv_0"]["kernel"].shape == (3, 3, 3, 8)


def test_masked_channels_are_silent_and_zero():
    x = jnp.ones((2, 6, 6, 3))
    variables = random_variables(ResNet(8, 6), x)
    gs = prune.groups(ResNet(8, 6).apply, variables, x)
    keep = half_keep(gs)
    masks = prune.group_masks(variables, gs, keep)
    bn = masks["params"]["BatchNorm_1"]["bias"]
    np.testing.assert_array_equal(bn, keep[1])
    assert masks["params"]["Dense_0"]["bias"] is None
    kernel = masks["params"]["Conv_1"]["kernel"]
    np.testing.assert_array_equal(kernel[0, 0, 0], keep[1])
    np.testing.assert_array_equal(kernel[0, 0, :, 0], keep[0])


def test_concatenation():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(3, 4)), jnp.float32)
    check_exact(Concat(6, 8), x,
                lambda s, g, k: Concat(s["params/Dense_0"][0], s["params/Dense_1"][0]))


def test_attention_heads_and_head_dims():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 8)), jnp.float32)
    _, _, _, _, sizes = check_exact(
        Attention(4, 4, 6), x,
        lambda s, g, k: Attention(*s["params/query"], s["params/value"][1]))
    assert sizes["params/query"] == (2, 2) and sizes["params/value"] == (2, 3)


def test_fused_qkv_removes_whole_heads():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 8)), jnp.float32)

    def rebuild(sizes, gs, keep):
        heads, dim = (int(np.sum(k)) for k in keep)  # groups come heads first, then dims
        assert sizes["params/qkv"] == (3 * heads * dim,)
        return FusedAttention(heads, dim)

    check_exact(FusedAttention(4, 4), x, rebuild)


def test_scanned_layers_are_shrunk_per_layer():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8)), jnp.float32)
    variables, gs, keep, small, _sizes = check_exact(
        Scanned(12, 3), x, lambda s, g, k: Scanned(s["params/blocks/Dense_0"][0], 3))
    assert small["params"]["blocks"]["Dense_0"]["kernel"].shape == (3, 8, 6)
    # Each layer kept its own channels.
    for layer, (_g, k) in enumerate(zip(gs, keep)):
        big = variables["params"]["blocks"]["Dense_0"]["kernel"][layer]
        np.testing.assert_array_equal(small["params"]["blocks"]["Dense_0"]["kernel"][layer],
                                      big[:, np.asarray(k)])


def test_scanned_layers_must_keep_equal_counts():
    x = jnp.ones((2, 8))
    variables = random_variables(Scanned(12, 3), x)
    gs = prune.groups(Scanned(12, 3).apply, variables, x)
    keep = prune.group_keep([np.arange(g.size, dtype=np.float32) for g in gs],
                            [0.5, 0.25, 0.5])
    with pytest.raises(ValueError, match=r"params/blocks/Dense_0/bias.*different numbers"):
        prune.shrink(variables, gs, keep)


def test_nnx_rebuild_from_sizes():
    class Net(nnx.Module):
        def __init__(self, hidden, rngs):
            self.a = nnx.Linear(5, hidden, rngs=rngs)
            self.b = nnx.Linear(hidden, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    graphdef, state = nnx_random(lambda: Net(10, nnx.Rngs(0)))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5)), jnp.float32)
    gs = prune.groups(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    keep = half_keep(gs)
    small, sizes, _ = prune.shrink(state, gs, keep)
    model = nnx.eval_shape(lambda: Net(sizes["a"][0], nnx.Rngs(0)))
    nnx.update(model, small)
    masked = prune.apply(state, prune.group_masks(state, gs, keep))
    want = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(masked, x)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, x), want, rtol=1e-5, atol=1e-5)


def test_equinox_combine_with_the_static_part():
    abstract = eqx.filter_eval_shape(eqx.nn.MLP, 5, 3, 8, 2, key=KEY)
    params, static = eqx.partition(abstract, lambda a: isinstance(a, jax.ShapeDtypeStruct))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), params)
    fn = lambda p, x: jax.vmap(eqx.combine(p, static))(x)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5)), jnp.float32)
    gs = prune.groups(fn, params, x)
    keep = half_keep(gs)
    small, sizes, _ = prune.shrink(params, gs, keep)
    assert sizes["layers/0"] == (4,) and small.layers[1].weight.shape == (4, 4)
    run = jax.jit(fn)
    want = run(prune.apply(params, prune.group_masks(params, gs, keep)), x)
    np.testing.assert_allclose(run(small, x), want, rtol=1e-5, atol=1e-5)


def test_keep_is_checked():
    x = jnp.ones((2, 5))
    variables = random_variables(MLP((4,)), x)
    gs = prune.groups(MLP((4,)).apply, variables, x)
    with pytest.raises(ValueError, match="keep has 0 entries"):
        prune.shrink(variables, gs, [])
    with pytest.raises(ValueError, match=r"keep\[0\] has shape \(3,\)"):
        prune.shrink(variables, gs, [np.ones(3, bool)])
    with pytest.raises(TypeError, match="bool"):
        prune.group_masks(variables, gs, [np.ones(4)])
    wider = random_variables(MLP((3,)), x)
    with pytest.raises(ValueError, match="does not fit leaf"):
        prune.shrink(wider, gs, [np.ones(4, bool)])


class NnxBlock(nnx.Module):
    def __init__(self, hidden, rngs):
        self.ln = nnx.LayerNorm(8, rngs=rngs)
        self.fc1 = nnx.Linear(8, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, 8, rngs=rngs)

    def __call__(self, x):
        return x + self.fc2(nnx.relu(self.fc1(self.ln(x))))


class NnxStack(nnx.Module):
    """Blocks made under ``nnx.vmap`` and applied under ``nnx.scan`` (stacked params)."""

    def __init__(self, hidden, rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return NnxBlock(hidden, rngs)

        self.blocks = make(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(x, block):
            return block(x)

        return body(x, self.blocks)


def test_nnx_scan_groups_per_layer_and_shrinks_exactly():
    graphdef, state = nnx_random(lambda: NnxStack(12, nnx.Rngs(0)))
    fn = lambda s, x: nnx.merge(graphdef, s)(x)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 8)), jnp.float32)
    gs = prune.groups(fn, state, x)
    members = {("blocks/fc1/kernel", 2), ("blocks/fc1/bias", 1), ("blocks/fc2/kernel", 1)}
    assert [(g.size, g.layer, set(g.members)) for g in gs] == [
        (12, layer, members) for layer in range(3)]
    keep = half_keep(gs)
    small, sizes, _ = prune.shrink(state, gs, keep)
    assert sizes["blocks/fc1"] == (6,)
    small_graphdef, _ = nnx.split(nnx.eval_shape(lambda: NnxStack(6, nnx.Rngs(0))))
    want = jax.jit(fn)(prune.apply(state, prune.group_masks(state, gs, keep)), x)
    got = jax.jit(lambda s, x: nnx.merge(small_graphdef, s)(x))(small, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
