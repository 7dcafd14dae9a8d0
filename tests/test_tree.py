"""jaxrm.tree on Linen dicts, NNX state, Equinox modules and plain containers."""

import chex
import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrm import tree


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(8)(x))
        x = nn.LayerNorm()(x)
        return nn.Dense(3)(x)


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)])
        self.norm = nnx.LayerNorm(8, rngs=rngs)


@pytest.fixture
def linen_params():
    return LinenMLP().init(jax.random.key(0), jnp.ones((1, 4)))["params"]


def test_linen_paths_and_weights(linen_params):
    assert tree.paths(linen_params) == [
        "Dense_0/bias",
        "Dense_0/kernel",
        "Dense_1/bias",
        "Dense_1/kernel",
        "LayerNorm_0/bias",
        "LayerNorm_0/scale",
    ]
    sel = tree.select(linen_params, None)
    chex.assert_trees_all_equal_structs(sel, linen_params)
    chosen = [p for p, s in tree.leaves_with_paths(sel) if s]
    assert chosen == ["Dense_0/kernel", "Dense_1/kernel"]
    assert tree.count(linen_params) == 4 * 8 + 8 * 3
    assert tree.count(linen_params, tree.arrays) == 4 * 8 + 8 + 8 * 3 + 3 + 8 + 8
    assert tree.nbytes(linen_params) == 4 * tree.count(linen_params, tree.arrays)


def test_nnx_state_drops_value():
    model = NNXMLP(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    assert tree.paths(state) == [
        "layers/0/bias",
        "layers/0/kernel",
        "layers/1/bias",
        "layers/1/kernel",
        "norm/bias",
        "norm/scale",
    ]
    assert tree.selected(state) == ["layers/0/kernel", "layers/1/kernel"]
    # split gives the same paths for the params
    _, params, _ = nnx.split(model, nnx.Param, ...)
    assert tree.paths(params) == tree.paths(state)


def test_equinox_module():
    mlp = eqx.nn.MLP(4, 3, 8, depth=2, key=jax.random.key(0))
    params = eqx.filter(mlp, eqx.is_array)
    assert tree.selected(params) == ["layers/0/weight", "layers/1/weight", "layers/2/weight"]
    assert tree.count(params, tree.arrays) == 4 * 8 + 8 + 8 * 8 + 8 + 8 * 3 + 3
    # the unfiltered module holds non-array leaves (activations): never selected
    assert tree.selected(mlp) == tree.selected(params)


def test_containers_and_regex():
    t = {"a": [np.ones((2, 3)), (np.ones(3), jnp.ones((3, 3), jnp.int32))], "b": jnp.ones((2, 2))}
    assert tree.paths(t) == ["a/0", "a/1/0", "a/1/1", "b"]
    # integer matrices are not weights
    assert tree.selected(t) == ["a/0", "b"]
    assert tree.selected(t, "^a/") == ["a/0", "a/1/0", "a/1/1"]
    assert tree.selected(t, lambda p, x: x.ndim == 1) == ["a/1/0"]


def test_map_selected_keeps_structure_and_inputs(linen_params):
    before = jax.tree.map(np.asarray, linen_params)
    out = tree.map_selected(lambda p, x: x * 0, linen_params, "kernel")
    chex.assert_trees_all_equal_structs(out, linen_params)
    assert float(jnp.abs(out["Dense_0"]["kernel"]).sum()) == 0.0
    chex.assert_trees_all_equal(out["Dense_0"]["bias"], linen_params["Dense_0"]["bias"])
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, linen_params), before)
    masks = tree.map_selected(lambda p, x: x > 0, linen_params, otherwise=lambda p, x: None)
    assert [p for p, m in tree.leaves_with_paths(masks, keep_none=True) if m is not None] == [
        "Dense_0/kernel",
        "Dense_1/kernel",
    ]


def test_check_matches(linen_params):
    masks = tree.map_selected(lambda p, x: x > 0, linen_params, otherwise=lambda p, x: None)
    tree.check_matches(linen_params, masks, "masks")
    bad = dict(masks)
    bad["Dense_0"] = {"bias": None, "kernel": jnp.ones((2, 2), bool)}
    with pytest.raises(ValueError, match=r"masks at leaf 'Dense_0/kernel' has shape"):
        tree.check_matches(linen_params, bad, "masks")
    missing = {k: v for k, v in masks.items() if k != "Dense_1"}
    with pytest.raises(ValueError, match=r"masks .*missing leaves \['Dense_1/bias'"):
        tree.check_matches(linen_params, missing, "masks")


def test_where_errors(linen_params):
    with pytest.raises(ValueError, match="where='nothing' selects no leaf"):
        tree.selected(linen_params, "nothing")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        tree.select(linen_params, "(")
    with pytest.raises(TypeError, match="where must be None"):
        tree.select(linen_params, 3)


@settings(max_examples=30, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3), min_size=1, max_size=5)
)
def test_count_and_nbytes_match_numpy(shapes):
    t = {f"l{i}": np.zeros(s, np.float16 if i % 2 else np.float32) for i, s in enumerate(shapes)}
    assert tree.nbytes(t) == sum(x.nbytes for x in t.values())
    assert tree.count(t, tree.arrays) == sum(x.size for x in t.values())
    assert tree.count(t) == sum(x.size for x in t.values() if x.ndim >= 2)


def test_path_str_of_key_kinds():
    kp = (
        jax.tree_util.DictKey("a"),
        jax.tree_util.SequenceKey(2),
        jax.tree_util.GetAttrKey("w"),
        jax.tree_util.FlattenedIndexKey(1),
    )
    assert tree.path_str(kp) == "a/2/w/1"
    assert tree.path_str((jax.tree_util.DictKey("k"), jax.tree_util.GetAttrKey("value"))) == "k"
    assert tree.path_str(()) == ""
