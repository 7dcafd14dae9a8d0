"""The per-leaf settings vocabulary (jaxrm.tree.resolve / Rules) and the shared argument checks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from jaxrm import _checks
from jaxrm import tree as jtree

PARAMS = {
    "attn": {"q": {"kernel": np.zeros((4, 2, 2))}, "q_bias": np.zeros((2, 2))},
    "mlp": {"kernel": np.zeros((4, 8)), "bias": np.zeros(8)},
}
PATHS = ["attn/q/kernel", "attn/q_bias", "mlp/bias", "mlp/kernel"]


def test_the_four_forms_give_the_same_values():
    want = [0.5, None, None, 0.9]
    rules = [("attn/q/kernel", 0.5), ("mlp/kernel", 0.9)]
    assert jtree.paths(PARAMS) == PATHS
    assert jtree.resolve(rules, PARAMS, argument="sparsity", default=None) == want
    assert jtree.resolve(jtree.Rules(rules), PARAMS, argument="sparsity", default=None) == want
    table = dict(zip(PATHS, want))
    assert jtree.resolve(lambda p, x: table[p], PARAMS, argument="sparsity") == want
    pytree = {"attn": {"q": {"kernel": 0.5}, "q_bias": None}, "mlp": {"kernel": 0.9, "bias": None}}
    assert jtree.resolve(pytree, PARAMS, argument="sparsity") == want
    assert jtree.resolve(0.7, PARAMS, argument="sparsity") == [0.7] * 4
    only = [True, False, False, True]
    assert jtree.resolve(0.7, PARAMS, argument="s", only=only) == [0.7, None, None, 0.7]
    # Rules need not match leaves that `only` leaves out.
    assert jtree.resolve(rules, PARAMS, argument="s", only=only) == [0.5, None, None, 0.9]


def test_first_match_wins_and_search_semantics():
    rules = [("kernel$", 1), ("attn", 2), (".*", 3)]
    assert jtree.resolve(rules, PARAMS, argument="bits") == [1, 2, 3, 1]
    r = jtree.Rules(rules)
    assert r.find("mlp/bias") == 2 and r.value("attn/q_bias") == 2
    assert hash(r) == hash(jtree.Rules(rules))  # usable as a static jit argument


def test_no_match_and_bad_rules_name_argument_and_path():
    with pytest.raises(ValueError, match=r"bits: no rule matches leaf 'attn/q_bias'"):
        jtree.resolve([("kernel", 4)], PARAMS, argument="bits")
    with pytest.raises(ValueError, match=r"bits\[1\]=.*not a valid regular expression"):
        jtree.resolve(jtree.Rules([("a", 1), ("(", 2)], "bits"), PARAMS, argument="bits")
    with pytest.raises(TypeError, match=r"bits\[0\] must be a \(regex, value\) pair"):
        jtree.Rules([("a", 1, 2)], "bits")
    with pytest.raises(ValueError, match=r"sparsity does not have the structure.*mlp/kernel"):
        jtree.resolve({"attn": {"q": {"kernel": 0.1}, "q_bias": 0.1}, "mlp": {"bias": 0.1}},
                      PARAMS, argument="sparsity")


def test_tuple_values_and_custom_scalars():
    axes = jtree.resolve((0, 1), PARAMS, argument="axis")
    assert axes == [(0, 1)] * 4
    per_leaf = {"attn": {"q": {"kernel": (1, 2)}, "q_bias": None},
                "mlp": {"kernel": (1,), "bias": None}}
    assert jtree.resolve(per_leaf, PARAMS, argument="axis") == [(1, 2), None, None, (1,)]
    # A callable value (an initializer) is a scalar when the caller says so.
    init = jnp.zeros
    got = jtree.resolve(init, PARAMS, argument="init", is_scalar=callable)
    assert got == [init] * 4
    # A tuple tree of the params' own structure is per leaf, not one value.
    assert jtree.resolve((0.1, 0.2), (np.ones(2), np.ones(3)), argument="s") == [0.1, 0.2]


def test_nnx_state_setting_for_a_dict_tree_and_resolve_tree():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    values = nnx.to_pure_dict(state)
    setting = jax.tree.map(lambda x: float(x.ndim), state)
    assert jtree.resolve(setting, values, argument="bits") == [1.0, 2.0]
    t = jtree.resolve_tree([("kernel", 4)], values, argument="bits", default=8)
    assert t == {"bias": 8, "kernel": 4}


@given(st.lists(st.sampled_from(["attn", "mlp", "kernel", "bias", "q", "^mlp", "q_"]),
                min_size=1, max_size=4))
def test_rules_match_first_re_search(patterns):
    rules = [(p, i) for i, p in enumerate(patterns)]
    got = jtree.resolve(rules, PARAMS, argument="x", default=-1)
    for path, v in zip(PATHS, got):
        first = next((i for i, p in enumerate(patterns) if re.search(p, path)), -1)
        assert v == first


def test_checks():
    assert _checks.integer(np.int64(3), "n", minimum=1) == 3
    with pytest.raises(TypeError, match="n must be an int, got bool"):
        _checks.integer(True, "n")
    with pytest.raises(ValueError, match=r"n at leaf 'a/b' must be >= 1, got 0"):
        _checks.positive_int(0, "n", path="a/b")
    with pytest.raises(ValueError, match="scope must be one of 'layer', 'global'; got 'x'"):
        _checks.choice("x", "scope", ("layer", "global"))
    assert _checks.choice("layer", "scope", ("layer", "global")) == "layer"
    with pytest.raises(ValueError, match="finite"):
        _checks.real(float("nan"), "power", minimum=0)
    with pytest.raises(ValueError, match="< 1"):
        _checks.real(1.0, "sparsity", minimum=0, below=1)
    assert _checks.axes(-1, "axis", 3) == (2,)
    with pytest.raises(ValueError, match="out of range"):
        _checks.axes((0, 3), "axis", 3)
    with pytest.raises(ValueError, match="repeats"):
        _checks.axes((0, -3), "axis", 3)
