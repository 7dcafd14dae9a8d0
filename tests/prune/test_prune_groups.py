"""prune.groups against hand-written coupling lists on hand-built models."""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from structural_models import (
    MLP,
    Attention,
    Concat,
    Flattened,
    FusedAttention,
    ResNet,
    Scanned,
)

from jaxrm import prune

KEY = jax.random.key(0)


def found(model, x):
    # Only shapes matter to the trace: abstract variables skip running init.
    variables = jax.eval_shape(model.init, KEY, x)
    return variables, prune.groups(model.apply, variables, jax.ShapeDtypeStruct(x.shape, x.dtype))


def as_sets(groups):
    return sorted(
        (g.size, g.layer, tuple(sorted(g.members))) for g in groups
    )


def expect(*entries):
    return sorted((size, layer, tuple(sorted(members))) for size, layer, members in entries)


def test_chain_couples_each_hidden_layer_and_leaves_input_and_logits_out():
    _, gs = found(MLP((16, 8)), jnp.ones((2, 5)))
    assert as_sets(gs) == expect(
        (16, None, [("params/Dense_0/kernel", 1), ("params/Dense_0/bias", 0),
                    ("params/Dense_1/kernel", 0)]),
        (8, None, [("params/Dense_1/kernel", 1), ("params/Dense_1/bias", 0),
                   ("params/Dense_2/kernel", 0)]),
    )
    for g in gs:
        roles = dict(zip(g.members, g.roles))
        assert next(m for m, r in roles.items() if r == "out")[1] == 1
        np.testing.assert_array_equal(g.index[0][:, 0], np.arange(g.size))


def test_residual_block_with_batchnorm_joins_stem_skip_and_running_statistics():
    _, gs = found(ResNet(8, 6), jnp.ones((2, 6, 6, 3)))
    stem = [("params/Conv_0/kernel", 3), ("params/Conv_2/kernel", 3),
            ("params/Conv_1/kernel", 2), ("params/Dense_0/kernel", 0)]
    inner = [("params/Conv_1/kernel", 3), ("params/Conv_2/kernel", 2)]
    for i in (0, 2):
        stem += [(f"params/BatchNorm_{i}/{n}", 0) for n in ("scale", "bias")]
        stem += [(f"batch_stats/BatchNorm_{i}/{n}", 0) for n in ("mean", "var")]
    inner += [("params/BatchNorm_1/scale", 0), ("params/BatchNorm_1/bias", 0),
              ("batch_stats/BatchNorm_1/mean", 0), ("batch_stats/BatchNorm_1/var", 0)]
    assert as_sets(gs) == expect((8, None, stem), (6, None, inner))


def test_concatenation_gives_each_branch_its_slice_of_the_next_kernel():
    _, gs = found(Concat(5, 7), jnp.ones((2, 4)))
    assert as_sets(gs) == expect(
        (5, None, [("params/Dense_0/kernel", 1), ("params/Dense_0/bias", 0),
                   ("params/Dense_2/kernel", 0)]),
        (7, None, [("params/Dense_1/kernel", 1), ("params/Dense_1/bias", 0),
                   ("params/Dense_2/kernel", 0)]),
    )
    for g in gs:
        rows = dict(zip(g.members, g.index))[("params/Dense_2/kernel", 0)][:, 0]
        start = 0 if g.size == 5 else 5
        np.testing.assert_array_equal(rows, start + np.arange(g.size))


def _attention_expected(q, k, v, o, heads, qk, vd):
    head = [(f"{p}/kernel", 1) for p in (q, k, v)] + [(f"{p}/bias", 0) for p in (q, k, v)]
    return expect(
        (heads, None, [*head, (f"{o}/kernel", 0)]),
        (qk, None, [(f"{q}/kernel", 2), (f"{k}/kernel", 2), (f"{q}/bias", 1),
                    (f"{k}/bias", 1)]),
        (vd, None, [(f"{v}/kernel", 2), (f"{v}/bias", 1), (f"{o}/kernel", 1)]),
    )


def test_separate_qkv_heads_and_head_dims():
    _, gs = found(Attention(4, 3, 5), jnp.ones((2, 5, 8)))
    assert as_sets(gs) == _attention_expected(
        "params/query", "params/key", "params/value", "params/out", 4, 3, 5)


def test_flax_multi_head_attention():
    model = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
    _, gs = found(model, jnp.ones((2, 5, 8)))
    assert as_sets(gs) == _attention_expected(
        "params/query", "params/key", "params/value", "params/out", 2, 4, 4)


def test_fused_qkv_head_is_a_strided_set_of_columns():
    heads, dim = 4, 3
    _, gs = found(FusedAttention(heads, dim), jnp.ones((2, 5, 8)))
    members = [("params/qkv/kernel", 1), ("params/qkv/bias", 0), ("params/out/kernel", 0)]
    assert as_sets(gs) == expect((heads, None, members), (dim, None, members))
    by_size = {g.size: dict(zip(g.members, g.index)) for g in gs}
    # Column c of the fused kernel is (t, h, d) with c = t*H*D + h*D + d.
    cols = np.arange(3 * heads * dim).reshape(3, heads, dim)
    for h in range(heads):
        np.testing.assert_array_equal(
            np.sort(by_size[heads][("params/qkv/kernel", 1)][h]), np.sort(cols[:, h].ravel()))
        np.testing.assert_array_equal(
            by_size[heads][("params/out/kernel", 0)][h], np.arange(h * dim, (h + 1) * dim))
    for d in range(dim):
        np.testing.assert_array_equal(
            np.sort(by_size[dim][("params/qkv/kernel", 1)][d]), np.sort(cols[..., d].ravel()))


def test_scanned_layers_give_one_group_per_layer():
    _, gs = found(Scanned(12, 3), jnp.ones((2, 8)))
    members = [("params/blocks/Dense_0/kernel", 2), ("params/blocks/Dense_0/bias", 1),
               ("params/blocks/Dense_1/kernel", 1)]
    # The residual stream is normalised (LayerNorm reduces it) and is the output: no group.
    assert as_sets(gs) == expect(*[(12, layer, members) for layer in range(3)])


def test_unresolvable_reshape_names_the_op_and_the_leaf():
    model = Flattened()
    x = jnp.ones((2, 4, 4, 3))
    variables = jax.eval_shape(model.init, KEY, x)
    with pytest.raises(ValueError, match=r"Conv_0/(bias|kernel).*`reshape`.*\[2,24,4\]"):
        prune.groups(model.apply, variables, x)
    assert prune.groups(model.apply, variables, x, unresolved="skip") == []


def test_flatten_into_a_dense_keeps_channels_coupled_with_strided_rows():
    class Head(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.relu(nn.Conv(6, (3, 3))(x))
            return nn.Dense(2)(y.reshape(y.shape[0], -1))

    _, gs = found(Head(), jnp.ones((2, 4, 4, 3)))
    assert as_sets(gs) == expect((6, None, [("params/Conv_0/kernel", 3),
                                            ("params/Conv_0/bias", 0),
                                            ("params/Dense_0/kernel", 0)]))
    rows = dict(zip(gs[0].members, gs[0].index))[("params/Dense_0/kernel", 0)]
    np.testing.assert_array_equal(rows[2], np.arange(16) * 6 + 2)


def test_nnx_through_split():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(5, 9, rngs=rngs)
            self.b = nnx.Linear(9, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    graphdef, state = nnx.split(nnx.eval_shape(lambda: Net(nnx.Rngs(0))))
    gs = prune.groups(lambda s, x: nnx.merge(graphdef, s)(x), state, jnp.ones((2, 5)))
    assert as_sets(gs) == expect((9, None, [("a/kernel", 1), ("a/bias", 0), ("b/kernel", 0)]))


def test_equinox_linear_weights_are_out_by_in():
    abstract = eqx.filter_eval_shape(eqx.nn.MLP, 5, 3, 7, 2, key=KEY)
    params, static = eqx.partition(abstract, lambda a: isinstance(a, jax.ShapeDtypeStruct))
    gs = prune.groups(lambda p, x: jax.vmap(eqx.combine(p, static))(x), params, jnp.ones((2, 5)))
    assert as_sets(gs) == expect(
        (7, None, [("layers/0/weight", 0), ("layers/0/bias", 0), ("layers/1/weight", 1)]),
        (7, None, [("layers/1/weight", 0), ("layers/1/bias", 0), ("layers/2/weight", 1)]),
    )


def test_depthwise_convolution_couples_its_channels_with_the_producer():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.relu(nn.Conv(6, (1, 1))(x))
            y = nn.relu(nn.Conv(6, (3, 3), feature_group_count=6)(y))
            return nn.Conv(2, (1, 1))(y)

    _, gs = found(Net(), jnp.ones((2, 5, 5, 3)))
    assert as_sets(gs) == expect((6, None, [
        ("params/Conv_0/kernel", 3), ("params/Conv_0/bias", 0), ("params/Conv_1/kernel", 3),
        ("params/Conv_1/bias", 0), ("params/Conv_2/kernel", 2)]))


def test_bad_arguments():
    with pytest.raises(TypeError, match="fn must be callable"):
        prune.groups(3, {}, 1)
    with pytest.raises(ValueError, match="unresolved"):
        prune.groups(lambda p, x: x, {}, 1, unresolved="maybe")


def test_pooling_windows_keep_channels_coupled():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.max_pool(nn.relu(nn.Conv(8, (3, 3))(x)), (2, 2), (2, 2))
            x = nn.avg_pool(nn.relu(nn.Conv(6, (3, 3))(x)), (2, 2), (2, 2))
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    _, gs = found(Net(), jnp.ones((2, 8, 8, 1)))
    assert as_sets(gs) == expect(
        (8, None, [("params/Conv_0/kernel", 3), ("params/Conv_0/bias", 0),
                   ("params/Conv_1/kernel", 2)]),
        (6, None, [("params/Conv_1/kernel", 3), ("params/Conv_1/bias", 0),
                   ("params/Dense_0/kernel", 0)]),
    )


def test_calls_remat_custom_vjp_and_cond_are_walked_into():
    @jax.custom_vjp
    def squash(x):
        return jnp.tanh(x)

    squash.defvjp(lambda x: (squash(x), x), lambda x, g: (g,))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, inputs):
            x = squash(nn.Dense(6)(inputs))
            x = jax.checkpoint(jax.nn.silu)(nn.remat(nn.Dense)(5)(x))
            x = jax.lax.cond(inputs.sum() > 0, lambda a: a * 2, lambda a: a, x)
            return nn.Dense(2)(x)

    _, gs = found(Net(), jnp.ones((2, 4)))
    assert as_sets(gs) == expect(
        (6, None, [("params/Dense_0/kernel", 1), ("params/Dense_0/bias", 0),
                   ("params/CheckpointDense_0/kernel", 0)]),
        (5, None, [("params/CheckpointDense_0/kernel", 1), ("params/CheckpointDense_0/bias", 0),
                   ("params/Dense_1/kernel", 0)]),
    )


def test_an_array_the_function_closes_over_keeps_its_channels():
    shift = jnp.arange(6.0)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(6)(x) + shift)
            return nn.Dense(2)(nn.relu(nn.Dense(4)(h)))

    _, gs = found(Net(), jnp.ones((2, 3)))
    # Dense_1 is the Dense(2) (constructed first), Dense_2 the Dense(4).
    assert as_sets(gs) == expect((4, None, [("params/Dense_2/kernel", 1),
                                            ("params/Dense_2/bias", 0),
                                            ("params/Dense_1/kernel", 0)]))


def test_embedding_width_is_a_group_and_its_vocabulary_is_not():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, ids):
            return nn.Dense(3)(nn.relu(nn.Dense(12)(nn.Embed(50, 16)(ids))))

    x = jax.ShapeDtypeStruct((2, 7), jnp.int32)
    gs = prune.groups(Net().apply, jax.eval_shape(Net().init, KEY, x), x)
    # Dense_0 is the Dense(3) (constructed first), Dense_1 the Dense(12).
    assert as_sets(gs) == expect(
        (16, None, [("params/Embed_0/embedding", 1), ("params/Dense_1/kernel", 0)]),
        (12, None, [("params/Dense_1/kernel", 1), ("params/Dense_1/bias", 0),
                    ("params/Dense_0/kernel", 0)]),
    )
