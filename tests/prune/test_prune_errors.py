"""Bad input raises early, naming the argument and the leaf path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrm import prune


def _params():
    return {
        "Dense_0": {"kernel": jnp.ones((4, 6)), "bias": jnp.zeros(6)},
        "Dense_1": {"kernel": jnp.ones((6, 3)), "bias": jnp.zeros(3)},
    }


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_out_of_range(s):
    with pytest.raises(ValueError, match=r"sparsity.*\[0, 1\)"):
        prune.masks(_params(), s)
    with pytest.raises(ValueError, match="sparsity"):
        prune.uniform(_params(), s)
    with pytest.raises(ValueError, match="sparsity"):
        prune.constant(s)


def test_per_leaf_sparsity_errors_name_the_leaf():
    bad = {"Dense_0": {"kernel": 0.5, "bias": None}, "Dense_1": {"kernel": 1.2, "bias": None}}
    with pytest.raises(ValueError, match="Dense_1/kernel"):
        prune.masks(_params(), bad)
    missing = {"Dense_0": {"kernel": 0.5, "bias": None}, "Dense_1": {"kernel": None, "bias": None}}
    with pytest.raises(ValueError, match="Dense_1/kernel"):
        prune.masks(_params(), missing)
    with pytest.raises(ValueError, match="sparsity"):
        prune.masks(_params(), {"Dense_0": {"kernel": 0.5}})
    with pytest.raises(ValueError, match="scope='layer'"):
        prune.masks(_params(), prune.uniform(_params(), 0.5), scope="global")
    with pytest.raises(TypeError, match="sparsity"):
        prune.masks(_params(), True)
    with pytest.raises(TypeError, match="sparsity"):
        prune.masks(_params(), "0.5")


def test_nm_arguments_and_divisibility():
    with pytest.raises(ValueError, match="n must be in"):
        prune.nm(5, 4)
    with pytest.raises(ValueError, match="m must be"):
        prune.nm(0, 0)
    with pytest.raises(TypeError, match="n must be an int"):
        prune.nm(2.0, 4)
    with pytest.raises(ValueError, match=r"Dense_0/kernel.*divisible by m=4"):
        prune.masks(_params(), 0.5, pattern=prune.nm(2, 4, axis=-1))


def test_other_pattern_errors():
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        prune.masks(_params(), 0.5, pattern=prune.channels(axis=3))
    with pytest.raises(ValueError, match=r"Dense_1/kernel"):
        prune.masks(_params(), 0.5, pattern=prune.blocks((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        prune.blocks(())
    with pytest.raises(TypeError, match="pattern"):
        prune.masks(_params(), 0.5, pattern="2:4")


def test_mask_tree_mismatch_names_argument_and_leaf():
    params = _params()
    m = prune.masks(prune.magnitude(params), 0.5)
    wrong_shape = {**m, "Dense_1": {"kernel": jnp.ones((3, 6), bool), "bias": None}}
    with pytest.raises(ValueError, match=r"masks at leaf 'Dense_1/kernel' has shape"):
        prune.apply(params, wrong_shape)
    with pytest.raises(ValueError, match=r"masks.*missing leaves"):
        prune.apply(params, {"Dense_0": m["Dense_0"]})
    not_bool = {**m, "Dense_0": {"kernel": jnp.ones((4, 6)), "bias": None}}
    with pytest.raises(TypeError, match="Dense_0/kernel"):
        prune.apply(params, not_bool)
    with pytest.raises(ValueError, match="grads"):
        prune.saliency(params, {"Dense_0": params["Dense_0"]})


def test_integer_leaf_selected_and_where_selecting_nothing():
    params = {"w": jnp.ones((4, 4)), "table": jnp.ones((4, 4), jnp.int32)}
    with pytest.raises(TypeError, match=r"'table'.*int32"):
        prune.masks(params, 0.5, where="table")
    with pytest.raises(ValueError, match="where"):
        prune.masks(params, 0.5, where="nothing_here")
    with pytest.raises(ValueError, match="where"):
        prune.threshold(params, 1.0, where="nothing_here")
    with pytest.raises(ValueError, match="scope"):
        prune.masks(params, 0.5, scope="network")


def test_schedule_errors():
    with pytest.raises(ValueError, match="end must be >= begin"):
        prune.polynomial(0.9, begin=100, end=50)
    with pytest.raises(ValueError, match="every"):
        prune.polynomial(0.9, 0, 10, every=0)
    with pytest.raises(ValueError, match="final"):
        prune.polynomial(1.0, 0, 10)
    with pytest.raises(ValueError, match="at"):
        prune.one_shot(0.5, at=-1)
    with pytest.raises(ValueError, match="strictly increasing"):
        prune.iterative([10, 10], [0.5, 0.6])
    with pytest.raises(ValueError, match="same length"):
        prune.iterative([10], [0.5, 0.6])
    with pytest.raises(ValueError, match=r"sparsities\[1\]"):
        prune.iterative([1, 2], [0.5, 1.0])


def test_sparsify_and_threshold_errors():
    with pytest.raises(ValueError, match="score"):
        prune.sparsify(optax.sgd(0.1), prune.constant(0.5), score="taylor")
    with pytest.raises(TypeError, match="schedule"):
        prune.sparsify(optax.sgd(0.1), 0.5)
    with pytest.raises(ValueError, match="every"):
        prune.sparsify(optax.sgd(0.1), prune.constant(0.5), every=0)
    tx = prune.sparsify(optax.sgd(0.1), prune.constant(0.5), where="nothing_here")
    with pytest.raises(ValueError, match="where"):
        tx.init(_params())
    tx = prune.sparsify(optax.sgd(0.1), prune.constant(0.5))
    state = tx.init(_params())
    with pytest.raises(ValueError, match="params"):
        tx.update(_params(), state)
    with pytest.raises(ValueError, match="quality"):
        prune.threshold(_params(), -1.0)
    with pytest.raises(TypeError, match="key"):
        prune.random(0, _params())
    with pytest.raises(ValueError, match="SparsifyState"):
        prune.masks_of(optax.adam(1e-3).init(_params()))


def test_failed_calls_leave_inputs_untouched():
    params = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}
    before = params["w"].copy()
    with pytest.raises(ValueError):
        prune.masks(params, 0.5, pattern=prune.nm(2, 3, axis=-1))
    np.testing.assert_array_equal(params["w"], before)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure({"w": 0})
