"""The sparsify optax wrapper: zeros stay zero, schedule reached, resume, Linen and NNX."""

import re
import time

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from jaxrm import prune


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(4)(x)


def _data(steps, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((steps, 16, 12)).astype(np.float32)
    ys = rng.integers(0, 4, size=(steps, 16))
    return jnp.asarray(xs), jnp.asarray(ys)


def _linen_setup(tx):
    model = MLP()
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 12)))["params"]

    def loss(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(loss)(p, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return params, step


def _kernels(tree):
    return {k: np.asarray(tree[k]["kernel"]) for k in ("Dense_0", "Dense_1")}


SCHEDULE = prune.polynomial(0.75, 10, 60, every=10)


@pytest.fixture(scope="module")
def gradual():
    """One compiled training step shared by the 100-step and the resume tests."""
    tx = prune.sparsify(optax.adam(1e-2), SCHEDULE)
    params, step = _linen_setup(tx)
    return tx, params, step


def test_linen_100_steps_zeros_stay_zero_and_schedule_is_reached(gradual):
    sched = SCHEDULE
    tx, params, step = gradual
    state = tx.init(params)
    xs, ys = _data(100)
    prev = None
    targets = np.asarray(jax.vmap(sched)(jnp.arange(100)))
    for t in range(100):
        params, state = step(params, state, xs[t], ys[t])
        m = prune.masks_of(state)
        assert m["Dense_0"]["bias"] is None
        w, mk = _kernels(params), _kernels(m)
        for k in w:
            assert np.all(w[k][~mk[k]] == 0.0)  # pruned entries are exactly 0
            if prev is not None:
                assert not np.any(mk[k] & ~prev[k])  # the schedule only grows: no regrowth
            n = mk[k].size
            assert mk[k].sum() == round((1 - float(targets[t])) * n)
        prev = mk
    for k in w:
        assert mk[k].sum() == round(0.25 * mk[k].size)
        assert np.count_nonzero(w[k]) <= mk[k].sum()


def test_resume_from_orbax_checkpoint_is_identical(tmp_path, gradual):
    tx, params0, step = gradual
    xs, ys = _data(100, seed=1)

    p, s = params0, tx.init(params0)
    for t in range(100):
        p, s = step(p, s, xs[t], ys[t])
    straight = (p, s)

    p, s = params0, tx.init(params0)
    for t in range(50):
        p, s = step(p, s, xs[t], ys[t])
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "step50", {"params": p, "opt_state": s})
    ckpt.wait_until_finished()
    del p, s
    like = {"params": params0, "opt_state": tx.init(params0)}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = ckpt.restore(tmp_path / "step50", abstract)
    ckpt.close()
    p, s = restored["params"], restored["opt_state"]
    assert int(s.count) == 50
    assert prune.masks_of(s)["Dense_1"]["bias"] is None
    for t in range(50, 100):
        p, s = step(p, s, xs[t], ys[t])

    np.testing.assert_equal(jax.device_get(p), jax.device_get(straight[0]))
    got, want = prune.masks_of(s), prune.masks_of(straight[1])
    for k in ("Dense_0", "Dense_1"):
        np.testing.assert_array_equal(np.asarray(got[k]["kernel"]), np.asarray(want[k]["kernel"]))
    np.testing.assert_equal(jax.device_get(s.inner_state), jax.device_get(straight[1].inner_state))


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(12, 32, rngs=rngs)
        self.l2 = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


def test_nnx_optimizer_prunes_the_model():
    model = NNXNet(nnx.Rngs(0))
    tx = prune.sparsify(optax.adam(1e-2), prune.one_shot(0.5, at=3), scope="global")
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        opt.update(model, nnx.grad(loss)(model))

    xs, ys = _data(10, seed=2)
    for t in range(10):
        step(model, opt, xs[t], ys[t])
    m = prune.masks_of(opt)
    k1, k2 = np.asarray(m["l1"]["kernel"]), np.asarray(m["l2"]["kernel"])
    assert m["l1"]["bias"] is None
    assert k1.sum() + k2.sum() == round(0.5 * (k1.size + k2.size))
    assert np.all(np.asarray(model.l1.kernel[...])[~k1] == 0)
    assert np.all(np.asarray(model.l2.kernel[...])[~k2] == 0)
    assert prune.summary(nnx.state(model, nnx.Param), where="kernel").density == pytest.approx(0.5)


def test_masks_are_recomputed_only_on_refresh_steps():
    calls = []

    def counting_score(params, grads):
        jax.debug.callback(lambda: calls.append(1))
        return prune.magnitude(params)

    tx = prune.sparsify(optax.sgd(0.1), prune.one_shot(0.5, at=5), score=counting_score,
                        every=4)
    params, step = _linen_setup(tx)
    state = tx.init(params)
    xs, ys = _data(20, seed=3)
    for t in range(20):
        params, state = step(params, state, xs[t], ys[t])
    jax.effects_barrier()
    # refresh steps: 0, 5 (the schedule changes) and 4, 8, 12, 16 (every=4); no others
    assert len(calls) == 6


def test_masks_of_finds_state_inside_a_chain_and_patterns_and_saliency():
    inner = prune.sparsify(optax.sgd(0.1), prune.constant(0.5), score="saliency",
                           pattern=prune.nm(2, 4))
    tx = optax.chain(optax.clip_by_global_norm(1.0), inner)
    params, step = _linen_setup(tx)
    state = tx.init(params)
    xs, ys = _data(3, seed=4)
    for t in range(3):
        params, state = step(params, state, xs[t], ys[t])
    m = prune.masks_of(state)
    k0 = np.asarray(m["Dense_0"]["kernel"])  # (12, 32): groups of 4 along axis 0
    assert np.all(k0.reshape(3, 4, 32).sum(axis=1) == 2)
    assert np.all(np.asarray(params["Dense_0"]["kernel"])[~k0] == 0)


@pytest.mark.slow
def test_random_score_prunes_to_the_schedule():
    tx = prune.sparsify(optax.sgd(0.1), prune.constant(0.25), score="random",
                        key=jax.random.key(3))
    params, step = _linen_setup(tx)
    state = tx.init(params)
    xs, ys = _data(1)
    params, state = step(params, state, xs[0], ys[0])
    k = np.asarray(prune.masks_of(state)["Dense_0"]["kernel"])
    assert k.sum() == round(0.75 * k.size)
    assert np.all(np.asarray(params["Dense_0"]["kernel"])[~k] == 0)


def _primitive_counts(jaxpr) -> dict:
    """Equations per primitive, sub-jaxprs (cond branches, loop bodies) included."""
    counts: dict = {}

    def walk(j):
        for eqn in j.eqns:
            counts[eqn.primitive.name] = counts.get(eqn.primitive.name, 0) + 1
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr)
    return counts


def test_refresh_program_does_not_grow_with_same_shape_leaves():
    # The selection of every leaf of one row length runs in one loop: its
    # histograms (scatter-adds), loops and conds appear once, whatever the
    # number of leaves; only the cheap per-leaf reshapes and masking grow.
    def counts(leaves):
        params = {f"Dense_{i}": {"kernel": jnp.ones((16, 8), jnp.float32)} for i in range(leaves)}
        tx = prune.sparsify(optax.sgd(0.1), prune.constant(0.5), every=1)
        state = tx.init(params)
        return _primitive_counts(jax.make_jaxpr(tx.update)(params, state, params).jaxpr)

    few, many = counts(4), counts(32)
    assert few["scatter-add"] > 0
    for name in ("scatter-add", "while", "cond"):
        assert many.get(name, 0) == few.get(name, 0), (name, few.get(name), many.get(name))
    # per leaf: the optimizer's and the masking's elementwise equations, and the
    # cut of the batched flags at an offset held as data (34 measured)
    assert sum(many.values()) - sum(few.values()) <= 36 * 32


def _sparsify_program(leaves: int, side: int = 16):
    params = {f"Dense_{i}": {"kernel": jnp.ones((side, side), jnp.float32)} for i in range(leaves)}
    tx = prune.sparsify(optax.sgd(0.1), prune.constant(0.5), every=1)
    return jax.jit(tx.update).lower(params, tx.init(params), params)


def _distinct_computations(compiled_text: str) -> int:
    """Distinct computation bodies of an optimized HLO module (names and metadata
    dropped): XLA generates code once per distinct body."""
    bodies = set()
    for comp in re.split(r"\n(?=\S)", compiled_text):
        lines = comp.splitlines()[1:]
        bodies.add("\n".join(re.sub(r"%[\w.-]+", "%", re.sub(r", metadata=\{[^}]*\}", "", ln))
                             for ln in lines))
    return len(bodies)


def test_refresh_kernels_are_shared_by_same_shape_leaves():
    # Each leaf's piece of the batched flags is cut at an offset held as data,
    # so same-shape leaves share their kernels (static slices made one per leaf).
    few = _distinct_computations(_sparsify_program(2, side=8).compile().as_text())
    many = _distinct_computations(_sparsify_program(10, side=8).compile().as_text())
    assert many <= few + 2, (few, many)


@pytest.mark.slow
def test_refresh_compile_time_grows_slowly_with_same_shape_leaves():
    def compile_s(leaves):
        lowered = _sparsify_program(leaves, side=128)
        start = time.perf_counter()
        lowered.compile()
        return time.perf_counter() - start

    compile_s(8)  # warm the compiler
    few, many = min(compile_s(8) for _ in range(2)), min(compile_s(128) for _ in range(2))
    # 16x the leaves: 6-7x the compile time with a kernel per leaf, 2.5-3x with shared
    # kernels, about 1.9x with the counts as one vector (the rest is XLA's passes over
    # the per-leaf values, which a minimal refresh has too: benchmarks/prune.py).
    assert many < 4.5 * few, (few, many)
