"""Module-level remat by path rules on Linen and NNX models: paths kept, gradients kept,
residuals and compiled temporaries reduced, tag checks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from jaxrm import memory
from jaxrm.tree import paths
from tests.memory._models import NNXLM, ResNet, ScannedLM, lm_loss


def _tokens(batch, seq=8, vocab=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (batch, seq)), jnp.int32)


@pytest.fixture(scope="module")
def linen_lm():
    model = ScannedLM()
    return model, model.init(jax.random.key(0), _tokens(2))


def _linen_lm_loss(model):
    return lambda params, tokens: lm_loss(model.apply(params, tokens), tokens)


def test_linen_scan_paths_gradients_and_temp_bytes(linen_lm):
    model, params = linen_lm
    rematted = memory.remat_modules(model, [("^layers$", "full")], prevent_cse=False)
    # the same variables, by path, as the plain model: no renaming
    again = rematted.init(jax.random.key(0), _tokens(2))
    assert paths(again) == paths(params)
    chex.assert_trees_all_equal_shapes(again, params)
    tokens = _tokens(8)
    plain, remat = _linen_lm_loss(model), _linen_lm_loss(rematted)
    chex.assert_trees_all_close(jax.jit(jax.grad(remat))(params, tokens),
                                jax.jit(jax.grad(plain))(params, tokens), rtol=1e-5, atol=1e-6)
    assert memory.residual_bytes(remat, params, tokens) < memory.residual_bytes(
        plain, params, tokens)
    big = _tokens(64)
    t_plain = memory.report(jax.jit(jax.grad(plain)), params, big, residuals=False).temp_bytes
    t_remat = memory.report(jax.jit(jax.grad(remat)), params, big, residuals=False).temp_bytes
    assert t_remat < 0.75 * t_plain, (t_remat, t_plain)  # per-layer remat inside nn.scan


@pytest.mark.slow
def test_linen_choose_policy_on_rematted_model(linen_lm):
    model, params = linen_lm
    tokens = jax.ShapeDtypeStruct((32, 8), jnp.int32)

    def build(policy):
        rm = memory.remat_modules(model, [("^layers$", policy)], prevent_cse=False)
        return jax.jit(jax.grad(_linen_lm_loss(rm))), (params, tokens)

    none, full = (memory.report(f, *a, residuals=False)
                  for f, a in (build("none"), build("full")))
    assert full.temp_bytes < none.temp_bytes
    budget = (full.total_bytes + none.total_bytes) // 2
    assert memory.choose_policy(build, budget, policies=("none", "full")) == "full"


def test_linen_batchnorm_train_flag_and_mutable_collections():
    model = ResNet()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8, 8, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    rematted = memory.remat_modules(model, [(r"ResBlock_\d+$", "dots")])

    def loss(m):
        def f(params, x):
            logits, new = m.apply({**variables, "params": params}, x, train=True,
                                  mutable=["batch_stats"])
            return jnp.mean(logits**2), new

        return f

    (l0, s0), g0 = jax.jit(jax.value_and_grad(loss(model), has_aux=True))(variables["params"], x)
    (l1, s1), g1 = jax.jit(jax.value_and_grad(loss(rematted), has_aux=True))(variables["params"], x)
    chex.assert_trees_all_close((l1, s1, g1), (l0, s0, g0), rtol=1e-5, atol=1e-6)
    # eval mode goes through the same rules (train is a static Python flag)
    def evaluate(m):
        return jax.jit(lambda v, x: m.apply(v, x, train=False))(variables, x)

    chex.assert_trees_all_close(evaluate(rematted), evaluate(model), rtol=1e-6)
    r_plain = memory.residual_bytes(lambda p, x: loss(model)(p, x)[0], variables["params"], x)
    r_remat = memory.residual_bytes(lambda p, x: loss(rematted)(p, x)[0], variables["params"], x)
    assert r_remat < r_plain


def test_linen_names_policy_checks_tags(linen_lm):
    model, params = linen_lm
    tokens = _tokens(4)
    good = memory.remat_modules(model, [("^layers$", "names:mlp_hidden")])
    plain_res = memory.residual_bytes(_linen_lm_loss(model), params, tokens)
    full_res = memory.residual_bytes(
        _linen_lm_loss(memory.remat_modules(model, [("^layers$", "full")])), params, tokens)
    named = memory.residual_bytes(_linen_lm_loss(good), params, tokens)
    assert full_res < named < plain_res
    # one (batch, seq, 4d) float32 tag per layer is what names:mlp_hidden adds over full
    assert named - full_res == 3 * 4 * 8 * 64 * 4  # layers * batch * seq * 4d * 4 B
    bad = memory.remat_modules(model, [("^layers$", "names:mlp_hiden")])
    with pytest.raises(ValueError, match=r"mlp_hiden.*never tags.*mlp_hidden"):
        bad.apply(params, tokens)
    # a tag that exists elsewhere in the model but not inside the matched module
    elsewhere = memory.remat_modules(ResNet(), [("Dense_0", "names:conv_out")])
    x = jnp.ones((1, 8, 8, 3))
    with pytest.raises(ValueError, match="module 'Dense_0'"):
        elsewhere.init(jax.random.key(0), x)


def _nnx_loss(graphdef):
    def f(state, tokens):
        return lm_loss(nnx.merge(graphdef, state)(tokens), tokens)

    return f


def test_nnx_scan_paths_gradients_and_temp_bytes():
    model = NNXLM(rngs=nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model))
    rematted = memory.remat_modules(model, [("^layers$", "full")], prevent_cse=False)
    assert type(model.layers).__call__ is not type(rematted.layers).__call__
    assert type(model.layers).__name__ == type(rematted.layers).__name__
    g0, s0 = nnx.split(model)
    g1, s1 = nnx.split(rematted)
    assert paths(s0) == paths(s1)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, nnx.state(model)), before)  # untouched
    tokens = _tokens(8)
    chex.assert_trees_all_close(jax.jit(jax.grad(_nnx_loss(g1)))(s1, tokens),
                                jax.jit(jax.grad(_nnx_loss(g0)))(s0, tokens), rtol=1e-5, atol=1e-6)
    # the plain model's state (a checkpoint of it) runs in the rematted graph as it is
    chex.assert_trees_all_close(jax.jit(_nnx_loss(g1))(s0, tokens),
                                jax.jit(_nnx_loss(g0))(s0, tokens), rtol=1e-6)
    big = _tokens(64)
    t0 = memory.report(jax.jit(jax.grad(_nnx_loss(g0))), s0, big, residuals=False).temp_bytes
    t1 = memory.report(jax.jit(jax.grad(_nnx_loss(g1))), s1, big, residuals=False).temp_bytes
    assert t1 < 0.75 * t0, (t1, t0)
    assert memory.residual_bytes(_nnx_loss(g1), s1, tokens) < memory.residual_bytes(
        _nnx_loss(g0), s0, tokens)


def test_nnx_names_policy_checks_tags():
    model = NNXLM(layers=2, rngs=nnx.Rngs(0))
    tokens = _tokens(2)
    def shapes(rules):
        graphdef, state = nnx.split(memory.remat_modules(model, rules))
        return jax.eval_shape(_nnx_loss(graphdef), state, tokens)

    assert shapes([("^layers$", "names:mlp_hidden")]).shape == ()
    with pytest.raises(ValueError, match="never tags"):
        shapes([("^layers$", "names:nope")])
    with pytest.raises(ValueError, match=r"module 'head'.*never tags"):
        shapes([("head", "names:mlp_hidden")])


def test_remat_function_names_policy_checks_tags():
    def f(w, x):
        return jnp.sum(jnp.tanh(x @ w))

    w, x = jnp.ones((4, 4)), jnp.ones((2, 4))
    with pytest.raises(ValueError, match="never tags"):
        jax.grad(memory.remat(f, "names:hidden"))(w, x)
    with pytest.raises(ValueError, match="never tags"):
        jax.jit(memory.remat(f, "names:hidden"))(w, x)


def test_offload_policies_need_host_memory(monkeypatch):
    from jaxrm.memory import _remat

    monkeypatch.setattr(_remat, "_memory_kinds", lambda: {"device"})
    for name in ("offload_dots", "offload_names:mlp_hidden"):
        with pytest.raises(ValueError, match="pinned_host"):
            memory.policy(name)
        with pytest.raises(ValueError, match="pinned_host"):
            memory.remat_modules(ScannedLM(), [("layers", name)])


@pytest.mark.skipif("pinned_host" not in {m.kind for m in jax.devices()[0].addressable_memories()},
                    reason="the backend has no pinned_host memory")
@pytest.mark.slow
def test_offload_names_keeps_gradients():
    model = ResNet(blocks=1)
    x = jnp.ones((2, 6, 6, 3))
    variables = model.init(jax.random.key(0), x)
    rm = memory.remat_modules(model, [("ResBlock", "offload_names:conv_out")])

    def loss(m):
        return lambda p: jnp.sum(m.apply({**variables, "params": p}, x, train=False) ** 2)

    chex.assert_trees_all_close(jax.jit(jax.grad(loss(rm)))(variables["params"]),
                                jax.jit(jax.grad(loss(model)))(variables["params"]),
                                rtol=1e-5, atol=1e-6)


def test_bad_rules():
    with pytest.raises(TypeError, match="flax"):
        memory.remat_modules(lambda x: x, "full")
    with pytest.raises(TypeError, match=r"rules\[0\]"):
        memory.remat_modules(ScannedLM(), [("layers",)])
    with pytest.raises(ValueError, match="not a known policy"):
        memory.remat_modules(ScannedLM(), [("layers", "everything")])
    with pytest.raises(ValueError, match="regular expression"):
        memory.remat_modules(ScannedLM(), [("(", "full")])
    assert isinstance(memory.remat_modules(ScannedLM(), "full"), memory.RematLinen)
    assert not isinstance(nn.Module, memory.RematLinen)
