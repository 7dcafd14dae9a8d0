"""Quantized trees with orbax, Flax Linen and Flax NNX."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import linen, nnx

from jaxrm import quant


def _quantized_tree():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    keep = rng.random(w.shape) > 0.5
    params = {
        "a": {"kernel": w, "bias": np.ones(8, np.float32)},
        "b": {"kernel": rng.standard_normal((8, 4)).astype(np.float32)},
        "c": {"kernel": np.where(keep, w, 0).astype(np.float32)},
    }
    q = quant.uniform(params, 4, symmetric=False, axis=-1, where="a|b")
    shared = quant.kmeans(params, 3, masks={"a": {"kernel": None, "bias": None},
                                            "b": {"kernel": None},
                                            "c": {"kernel": keep}}, where="b|c")
    return {"a": q["a"], "b": shared["b"], "c": shared["c"]}


def test_orbax_round_trip(tmp_path):
    tree = _quantized_tree()
    assert isinstance(tree["a"]["kernel"], quant.QArray)
    assert isinstance(tree["a"]["bias"], quant.QArray)
    assert tree["b"]["kernel"].mask is None and tree["c"]["kernel"].mask is not None
    path = tmp_path / "ckpt"
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, tree)
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, tree))
    chex.assert_trees_all_equal(restored, tree)
    assert restored["c"]["kernel"].bits == 3 and restored["a"]["kernel"].axis == 1
    chex.assert_trees_all_equal(quant.dequantize(restored), quant.dequantize(tree))


class _Linen(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.relu(linen.Dense(32, name="Embed")(x))
        return linen.Dense(10)(x)


def test_linen_params():
    model = _Linen()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 24)), jnp.float32)
    params = model.init(jax.random.key(0), x)["params"]
    ref = model.apply({"params": params}, x)
    bits = jax.tree_util.tree_map_with_path(
        lambda kp, leaf: 8 if "Embed" in str(kp[0]) else 5, params
    )
    shared = quant.kmeans(params, bits)
    assert shared["Embed"]["kernel"].bits == 8 and shared["Dense_0"]["kernel"].bits == 5
    assert not quant.is_quantized(shared["Dense_0"]["bias"])
    out = model.apply({"params": quant.dequantize(shared)}, x)
    assert _rel_err(out, ref) < 0.1
    q = quant.uniform(params, 8, axis=-1)
    out8 = jax.jit(lambda p: model.apply({"params": quant.dequantize(p)}, x))(q)
    assert _rel_err(out8, ref) < 0.02


def _rel_err(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


class _NNX(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(12, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


def test_nnx_state():
    model = _NNX(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 12)), jnp.float32)
    ref = model(x)
    graphdef, state = nnx.split(model, nnx.Param)
    shared = quant.kmeans(state, 6)
    assert isinstance(shared["l1"]["kernel"].get_value(), quant.Codebook)
    qu = quant.uniform(state, 8)
    for tree, tol in ((shared, 0.1), (qu, 0.02)):
        dense = quant.dequantize(tree)
        chex.assert_trees_all_equal_shapes_and_dtypes(dense, state)
        out = nnx.merge(graphdef, dense)(x)
        assert _rel_err(out, ref) < tol
    # Fine-tune centroids of the NNX state: the float part is an nnx.State too.
    train, frozen = quant.partition(shared, centroids_only=True)
    grads = jax.grad(
        lambda t: jnp.sum(nnx.merge(graphdef, quant.dequantize(quant.combine(t, frozen)))(x))
    )(train)
    assert grads["l1"]["kernel"].get_value().centroids.shape == (64,)


def test_quantized_leaves_pass_through_jit_and_tree_map():
    tree = _quantized_tree()
    through = jax.jit(lambda t: t)(tree)
    chex.assert_trees_all_equal(through, tree)
    assert through["a"]["kernel"].axis == 1 and through["c"]["kernel"].bits == 3
    doubled = jax.tree.map(lambda a: a, tree)
    assert jax.tree.structure(doubled) == jax.tree.structure(tree)
    cb = tree["b"]["kernel"]
    moved = cb.replace(centroids=cb.centroids + 1.0)
    np.testing.assert_allclose(
        np.asarray(moved.dequantize()), np.asarray(cb.dequantize()) + 1.0, rtol=1e-6
    )
