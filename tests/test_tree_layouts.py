"""jaxrm.tree layouts and role-based selection on the architectures of tests/model_zoo.py."""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrm import tree as jtree
from tests import model_zoo as zoo

L, E, H, M = zoo.LAYERS, zoo.EMBED, zoo.HEADS, zoo.MLP
HD = E // H


def _by_path(t, **kw):
    return dict(zip(jtree.paths(t), jtree.layouts(t, **kw)))


def _chosen(t, where=None):
    return [p for p, s in jtree.leaves_with_paths(jtree.select(t, where)) if s]


def _axes(layout):
    return layout.stacked, layout.out, layout.contract, layout.kind


def test_resnet_block_with_batchnorm():
    variables = zoo.resnet_variables(abstract=True)
    assert _chosen(variables) == [
        "params/Conv_0/kernel", "params/Conv_1/kernel", "params/Dense_0/kernel",
        "params/conv_proj/kernel",
    ]
    lay = _by_path(variables)
    assert _axes(lay["params/Conv_0/kernel"]) == ((), (3,), (2,), "conv")
    assert _axes(lay["params/conv_proj/kernel"]) == ((), (3,), (2,), "conv")
    assert _axes(lay["params/Dense_0/kernel"]) == ((), (1,), (0,), "dense")
    for p in ("params/BatchNorm_0/scale", "batch_stats/BatchNorm_0/mean", "params/norm_proj/bias"):
        assert _axes(lay[p]) == ((), (), (), "other")


LINEN_WEIGHTS = {
    # path under layers/: (shape, stacked, out, contract)
    "Dense_0/kernel": ((L, E, M), (0,), (2,), (1,)),
    "Dense_1/kernel": ((L, M, E), (0,), (2,), (1,)),
    "MultiHeadDotProductAttention_0/query/kernel": ((L, E, H, HD), (0,), (2, 3), (1,)),
    "MultiHeadDotProductAttention_0/key/kernel": ((L, E, H, HD), (0,), (2, 3), (1,)),
    "MultiHeadDotProductAttention_0/value/kernel": ((L, E, H, HD), (0,), (2, 3), (1,)),
    "MultiHeadDotProductAttention_0/out/kernel": ((L, H, HD, E), (0,), (3,), (1, 2)),
}


@pytest.mark.parametrize("boxed", [True, False])
def test_linen_scanned_transformer(boxed):
    params = zoo.linen_stack_params(abstract=True)
    if not boxed:
        params = nn.unbox(params)
    expected = {"layers/" + k for k in LINEN_WEIGHTS} | {"head/kernel"}
    assert set(_chosen(params)) == expected
    lay = _by_path(params)
    for k, (shape, stacked, out, contract) in LINEN_WEIGHTS.items():
        got = lay["layers/" + k]
        assert got.shape == shape and _axes(got) == (stacked, out, contract, "dense"), k
        assert got.n_slices == L and got.slice().out == tuple(a - 1 for a in out)
    # Stacked biases, norm scales and attention biases (L, heads, hd) are not weights.
    for p in ("layers/Dense_0/bias", "layers/LayerNorm_0/scale",
              "layers/MultiHeadDotProductAttention_0/query/bias"):
        assert p not in _chosen(params)
        assert lay[p].stacked == (0,)


class _AxisOneScan(nn.Module):
    """Layers stacked on axis 1: only the partition names can say so."""

    @nn.compact
    def __call__(self, x):
        scanned = nn.scan(
            _DenseBlock,
            variable_axes={"params": 1}, split_rngs={"params": True}, length=L,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        return scanned(name="stack")(x, None)[0]


class _DenseBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        init = nn.with_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
        return nn.Dense(E, kernel_init=init)(x), None


def test_partition_names_win_over_module_names():
    params = jax.eval_shape(_AxisOneScan().init, jax.random.key(0), jnp.ones((1, E)))["params"]
    lay = _by_path(params)["stack/Dense_0/kernel"]
    assert lay.shape == (E, L, E)
    assert _axes(lay) == ((1,), (2,), (0,), "dense")


def test_nnx_scanned_transformer():
    stack = zoo.nnx_stack(abstract=True)
    state = nnx.state(stack, nnx.Param)
    lay = _by_path(state)
    expected = {
        "attn/query/kernel": ((L, E, H, HD), (0,), (2, 3), (1,)),
        "attn/out/kernel": ((L, H, HD, E), (0,), (3,), (1, 2)),
        "up/kernel": ((L, E, M), (0,), (2,), (1,)),  # named by the user: metadata says stacked
        "down/kernel": ((L, M, E), (0,), (2,), (1,)),
    }
    for p, (shape, stacked, out, contract) in expected.items():
        assert lay[p].shape == shape and _axes(lay[p]) == (stacked, out, contract, "dense"), p
    chosen = _chosen(state)
    assert set(chosen) == {f"attn/{n}/kernel" for n in ("query", "key", "value", "out")} | {
        "up/kernel", "down/kernel"
    }
    # The same paths and layouts as the pure-array state.
    pure = nnx.to_pure_dict(state)
    lay_pure = _by_path(pure)
    assert _axes(lay_pure["attn/query/kernel"]) == _axes(lay["attn/query/kernel"])


def test_equinox_mlp_and_cnn():
    mlp = eqx.filter(zoo.eqx_mlp(), eqx.is_array)
    assert _chosen(mlp) == ["layers/0/weight", "layers/1/weight", "layers/2/weight"]
    assert _axes(_by_path(mlp)["layers/0/weight"]) == ((), (0,), (1,), "dense")
    cnn = eqx.filter_eval_shape(zoo.EqxCNN, jax.random.key(0))
    assert _chosen(cnn) == ["conv1/weight", "conv2/weight", "head/weight"]
    lay = _by_path(cnn)
    assert _axes(lay["conv1/weight"]) == ((), (0,), (1,), "conv")  # OIHW
    assert _axes(lay["head/weight"]) == ((), (0,), (1,), "dense")
    assert _axes(lay["conv1/bias"]) == ((), (), (), "other")


def test_equinox_stacked_layers():
    stacked = eqx.filter_eval_shape(zoo.EqxStacked, jax.random.key(0))
    lay = _by_path(stacked)
    assert _axes(lay["linears/weight"]) == ((0,), (1,), (2,), "dense")
    # A stacked LayerNorm weight is (L, d), 2-D, yet a norm scale: never selected.
    assert _chosen(stacked) == ["linears/weight"]
    assert lay["norms/weight"].stacked == (0,)


def test_vit_leaves_cls_and_position_embeddings_alone():
    params = zoo.vit_params(abstract=True)
    assert set(_chosen(params)) == {
        "embedding/kernel", "head/kernel",
        *(f"MultiHeadDotProductAttention_0/{n}/kernel" for n in ("query", "key", "value", "out")),
    }
    lay = _by_path(params)
    assert _axes(lay["embedding/kernel"]) == ((), (3,), (2,), "conv")  # the patch embedding
    assert _axes(lay["MultiHeadDotProductAttention_0/query/kernel"]) == ((), (1, 2), (0,), "dense")
    assert _axes(lay["MultiHeadDotProductAttention_0/out/kernel"]) == ((), (2,), (0, 1), "dense")
    assert _axes(lay["cls"]) == ((), (), (), "other")
    # Explicit selection still reaches them.
    assert _chosen(params, "cls|pos_embedding") == ["cls", "posembed_input/pos_embedding"]


def test_gemma_style_fused_kv():
    t = {"attn": {"kv_einsum": {"w": jnp.zeros((2, 1, E, HD))},
                  "q_einsum": {"w": jnp.zeros((H, E, HD))},
                  "attn_vec_einsum": {"w": jnp.zeros((H, HD, E))}},
         "embedder": {"input_embedding": jnp.zeros((32, E))}}
    lay = _by_path(t)
    assert _axes(lay["attn/kv_einsum/w"]) == ((0,), (1, 3), (2,), "dense")
    assert _axes(lay["attn/q_einsum/w"]) == ((), (0, 2), (1,), "dense")
    assert _axes(lay["attn/attn_vec_einsum/w"]) == ((), (2,), (0, 1), "dense")
    # Scanned on top: (layers, 2, K, D, hd) with the layer axis given.
    stacked = {"kv_einsum": {"w": jnp.zeros((L, 2, 1, E, HD))}}
    assert _axes(jtree.layouts(stacked)[0]) == ((0, 1), (2, 4), (3,), "dense")


def test_overrides_win_and_defaults_keep_old_forms():
    t = {"w": jnp.zeros((4, 6, 8)), "b": jnp.zeros((6, 8))}
    # Unknown names: the trailing (in, out) of version 0.1, nothing stacked.
    assert _axes(_by_path(t)["w"]) == ((), (2,), (1,), "other")
    assert _chosen(t) == ["b", "w"]
    lay = jtree.layouts(t, stacked=[("^w$", 0)])
    assert lay[1].stacked == (0,) and lay[1].out == (2,) and lay[1].contract == (1,)
    assert lay[0].stacked == ()
    custom = jtree.Layout((4, 6, 8), stacked=(2,), out=(0,), contract=(1,), kind="dense")
    assert jtree.layouts(t, layout={"w": custom, "b": None})[1] == custom


def test_layout_slices_round_trip_against_numpy():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    lay = jtree.Layout(x.shape, stacked=(1, 3), out=(-2,), contract=(0,))
    assert lay.stacked == (1, 3) and lay.out == (2,) and lay.n_slices == 15
    assert lay.slice_shape == (2, 4)
    assert lay.slice() == jtree.Layout((2, 4), (), (1,), (0,), "other")
    ref = np.moveaxis(x, (1, 3), (0, 1)).reshape(15, 2, 4)
    s = lay.to_slices(x)
    assert isinstance(s, np.ndarray)
    np.testing.assert_array_equal(s, ref)
    np.testing.assert_array_equal(lay.from_slices(s), x)
    np.testing.assert_array_equal(np.asarray(lay.from_slices(lay.to_slices(jnp.asarray(x)))), x)
    flat = jtree.Layout((3, 4))
    assert flat.n_slices == 1 and flat.to_slices(np.ones((3, 4))).shape == (1, 3, 4)
    with pytest.raises(ValueError, match="shape"):
        lay.to_slices(np.ones((2, 3)))


def test_bad_layouts_name_argument_and_path():
    t = {"enc": {"kernel": jnp.zeros((4, 6)), "bias": jnp.zeros(6)}}
    with pytest.raises(ValueError, match=r"stacked at leaf 'enc/kernel'.*out of range"):
        jtree.layouts(t, stacked=[("kernel", 2), ("bias", None)])
    with pytest.raises(ValueError, match=r"stacked at leaf 'enc/bias'.*no axis"):
        jtree.layouts(t, stacked=[("bias", 0)], )
    with pytest.raises(TypeError, match=r"stacked at leaf 'enc/kernel'"):
        jtree.layouts(t, stacked=[("kernel", 0.5)])
    given = jtree.Layout((4, 6), stacked=(0,))
    with pytest.raises(ValueError, match=r"conflict at leaf 'enc/kernel'"):
        jtree.layouts(t, stacked=[("kernel", 1)], layout=[("kernel", given)])
    with pytest.raises(ValueError, match=r"layout at leaf 'enc/kernel' has shape"):
        jtree.layouts(t, layout=[("kernel", jtree.Layout((6, 4)))])
    with pytest.raises(TypeError, match=r"layout at leaf 'enc/kernel'"):
        jtree.layouts(t, layout=[("kernel", (0,))])
    with pytest.raises(ValueError, match="both stacked and out"):
        jtree.Layout((4, 6), stacked=(0,), out=(0,))
    with pytest.raises(ValueError, match="repeats"):
        jtree.Layout((4, 6, 2), out=(1, -2))
    with pytest.raises(ValueError, match="kind"):
        jtree.Layout((4, 6), kind="lstm")


def test_inputs_untouched():
    params = zoo.linen_stack_params()
    before = jax.tree.map(np.array, params)
    jtree.layouts(params)
    jtree.select(params)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, params))


def test_bare_pos_and_position_tables_are_not_weights():
    # GPT-style code often names its learned position table `pos` or `position`;
    # a weight that merely starts with "pos" (a `posterior` kernel) still counts.
    t = {"pos": jnp.zeros((64, 16)), "position": jnp.zeros((64, 16)),
         "embed": {"embedding": jnp.zeros((32, 16))},
         "posterior": {"kernel": jnp.zeros((16, 16))}}
    assert _chosen(t) == ["embed/embedding", "posterior/kernel"]
    assert _chosen(t, "pos$") == ["pos"]  # explicit selection still reaches it
