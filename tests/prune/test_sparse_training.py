"""RigL, SET, static sparse training and straight-through pruning against numpy references.

References: brute-force top-k in numpy (``prune_reference``), ``jax.grad`` of
the masked forward pass, the schedule formula evaluated in exact rational
arithmetic, frequencies over many seeds, and the jaxpr of the update.
"""

import fractions
import math

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from prune_reference import top_k_reference

from jaxrm import prune
from jaxrm import tree as jtree
from tests import model_zoo as zoo

KEY = jax.random.key(3)


def _mlp_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"a": {"kernel": jnp.asarray(rng.standard_normal((12, 20)), jnp.float32),
                  "bias": jnp.zeros(20)},
            "b": {"kernel": jnp.asarray(rng.standard_normal((20, 6)), jnp.float32),
                  "bias": jnp.zeros(6)}}


def _grads(params, seed):
    rng = np.random.default_rng(100 + seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), params)


def _drop_count(frac, n_active, n):
    """n_active - round((1 - f) * n_active), half to even, exact, capped at n - n_active."""
    keep = round((1 - fractions.Fraction(float(np.float32(frac)))) * n_active)
    return min(n_active - keep, n - n_active)


def _slices(x, layout):
    return np.asarray(layout.to_slices(jnp.asarray(x))).reshape(layout.n_slices, -1)


def _check_step(params, grads, old, new, new_params, frac, grow_by, layouts):
    """Each slice: exact count, k dropped by |w|, k grown among the inactive ones."""
    grown_all = {}
    for path, lay in layouts.items():
        w, g = _slices(np.abs(params[path]), lay), _slices(np.abs(grads[path]), lay)
        m0, m1 = _slices(old[path], lay), _slices(new[path], lay)
        for j in range(lay.n_slices):
            n, a = m0[j].size, int(m0[j].sum())
            assert m1[j].sum() == a, (path, j)
            k = _drop_count(frac, a, n)
            survivors = m0[j] & m1[j]
            grown = ~m0[j] & m1[j]
            assert survivors.sum() == a - k and grown.sum() == k
            want = top_k_reference([np.where(m0[j], w[j], -1.0)], a - k)[0]
            np.testing.assert_array_equal(survivors, want)
            if grow_by == "gradient":
                np.testing.assert_array_equal(
                    grown, top_k_reference([np.where(m0[j], -1.0, g[j])], k)[0])
        grown_all[path] = lay.from_slices(jnp.asarray(
            (~_slices(old[path], lay) & _slices(new[path], lay))
            .reshape(lay.n_slices, *lay.slice_shape)))
        np.testing.assert_array_equal(np.asarray(new_params[path])[np.asarray(~new[path])], 0.0)
        np.testing.assert_array_equal(np.asarray(new_params[path])[np.asarray(grown_all[path])],
                                      0.0)
    return grown_all


def _flat(tree):
    return dict(jtree.leaves_with_paths(tree, keep_none=True))


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_every_update_is_exact_against_numpy_and_moments_are_reset(method):
    params = _mlp_params()
    make = prune.rigl if method == "rigl" else prune.set_
    tx = make(optax.adam(0.05), 0.7, end_step=40, every=4, key=KEY)
    state = tx.init(params)
    update = jax.jit(tx.update)
    sched = optax.cosine_decay_schedule(0.3, 40)
    layouts = {p: jtree.layouts(params)[i] for i, p in enumerate(jtree.paths(params))
               if p.endswith("kernel")}
    targets = _flat(prune.erk(params, 0.7))
    params = prune.apply(params, prune.masks_of(state))
    for t in range(20):
        grads = _grads(params, t)
        old = _flat(prune.masks_of(state))
        u, state = update(grads, state, params)
        new_params = optax.apply_updates(params, u)
        new = _flat(prune.masks_of(state))
        fp, fn = _flat(params), _flat(new_params)
        if t % 4 == 0:
            grown = _check_step(fp, _flat(grads), old, new, fn, sched(t), method, layouts)
            adam = state.inner_state[0]
            for path, g in grown.items():
                assert np.asarray(g).any(), path
                for moment in (adam.mu, adam.nu):
                    np.testing.assert_array_equal(np.asarray(_flat(moment)[path])[np.asarray(g)],
                                                  0.0)
            # no gradient step on a mask update: kept weights and biases are unchanged
            for path in fp:
                keep = np.asarray(old[path] & new[path]) if path in layouts else True
                np.testing.assert_array_equal(np.asarray(fn[path])[keep],
                                              np.asarray(fp[path])[keep])
        else:
            for path in layouts:
                np.testing.assert_array_equal(np.asarray(new[path]), np.asarray(old[path]))
        for path in layouts:
            m = np.asarray(new[path])
            assert m.sum() == round((1 - targets[path]) * m.size)
            assert np.all(np.asarray(fn[path])[~m] == 0.0)
        params = new_params


def test_erk_targets_and_static_mask_are_fixed_and_random():
    params = _mlp_params()
    erk = prune.erk(params, 0.8)
    tx = prune.static(optax.sgd(0.1), 0.8, key=KEY)
    state = tx.init(params)
    m0 = prune.masks_of(state)
    for name in ("a", "b"):
        k = np.asarray(m0[name]["kernel"])
        assert k.sum() == round((1 - erk[name]["kernel"]) * k.size)
    assert m0["a"]["bias"] is None
    u_state = state
    for t in range(3):
        u, u_state = tx.update(_grads(params, t), u_state, params)
        params = optax.apply_updates(params, u)
    m1 = prune.masks_of(u_state)
    np.testing.assert_array_equal(np.asarray(m1["a"]["kernel"]), np.asarray(m0["a"]["kernel"]))
    assert np.all(np.asarray(params["a"]["kernel"])[~np.asarray(m0["a"]["kernel"])] == 0)
    uni = prune.masks_of(prune.static(optax.sgd(0.1), 0.8, key=KEY, init="uniform")
                         .init(params))
    assert np.asarray(uni["b"]["kernel"]).sum() == round(0.2 * 120)
    other = prune.masks_of(prune.static(optax.sgd(0.1), 0.8, key=jax.random.key(4)).init(params))
    assert not np.array_equal(np.asarray(other["a"]["kernel"]), np.asarray(m0["a"]["kernel"]))


def test_set_grows_uniformly_at_random_and_is_deterministic():
    params = {"w": jnp.asarray(np.arange(1.0, 41.0).reshape(4, 10), jnp.float32)}
    grads = {"w": jnp.zeros((4, 10))}
    tx = prune.set_(optax.sgd(0.1), 0.5, end_step=10, every=1, key=KEY, init="uniform",
                    where="w", schedule=optax.constant_schedule(0.25))
    # the same initial mask for every seed, so that only the growth is random
    mask = np.zeros(40, bool)
    mask[::2] = True
    state = tx.init(params)._replace(masks={"w": jnp.asarray(mask.reshape(4, 10))})
    p = {"w": params["w"] * mask.reshape(4, 10)}
    # the key lives in the state: one compiled update serves every seed
    update = jax.jit(lambda key: tx.update(grads, state._replace(key=key), p)[1].masks["w"])
    seeds = 300
    new = np.stack([np.asarray(update(jax.random.key_data(jax.random.key(seed))))
                    for seed in range(seeds)]).reshape(seeds, 40)
    grown = new & ~mask
    assert np.all(grown.sum(axis=1) == 5)  # k = 20 - round(0.75 * 20)
    # the drop is by magnitude (the 5 smallest active weights: 1, 3, 5, 7, 9), the same for all
    assert np.all((new & mask) == (mask & (np.arange(1, 41) > 9)))
    np.testing.assert_array_equal(  # deterministic
        np.asarray(update(jax.random.key_data(jax.random.key(0)))).reshape(40), new[0])
    counts = grown.sum(axis=0)
    assert np.all(counts[mask] == 0)
    # each of the 20 inactive entries is grown with probability 5/20
    expected = seeds * 5 / 20
    chi2 = float(np.sum((counts[~mask] - expected) ** 2 / expected))
    assert chi2 < 45.3  # the 0.999 quantile of chi-square with 19 degrees of freedom
    assert len({tuple(g) for g in grown}) > seeds // 2  # the seeds give different subsets


def test_drop_counts_follow_the_cosine_schedule_and_stop_at_end_step():
    params = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((50, 40)), jnp.float32)}
    tx = prune.rigl(optax.sgd(0.0), 0.9, end_step=30, every=5, drop_fraction=0.5, key=KEY,
                    where="w")
    state = tx.init(params)
    update = jax.jit(tx.update)
    moved = []
    p = prune.apply(params, prune.masks_of(state))
    for t in range(40):
        old = np.asarray(state.masks["w"])
        u, state = update(_grads(p, t), state, p)
        p = optax.apply_updates(p, u)
        moved.append(int((old & ~np.asarray(state.masks["w"])).sum()))
    for t in range(40):
        f = 0.5 * 0.5 * (1 + math.cos(math.pi * t / 30))
        want = _drop_count(f, 200, 2000) if (t % 5 == 0 and t < 30) else 0
        assert moved[t] == want, t
    assert moved[0] == 100 and moved[25] == 200 - round(200 * (1 - np.float32(
        optax.cosine_decay_schedule(0.5, 30)(25))))


def test_non_update_steps_do_not_run_the_growth():
    params = _mlp_params()
    tx = prune.rigl(optax.adam(1e-3), 0.8, end_step=100, key=KEY)
    state = tx.init(params)
    jaxpr = jax.make_jaxpr(tx.update)(_grads(params, 0), state, params).jaxpr

    def nested(j):
        out = set()
        for e in j.eqns:
            out.add(e.primitive.name)
            for v in e.params.values():
                for sub in (v if isinstance(v, tuple | list) else (v,)):
                    if hasattr(sub, "jaxpr"):
                        out |= nested(sub.jaxpr)
        return out

    top = {e.primitive.name for e in jaxpr.eqns}
    conds = [e for e in jaxpr.eqns if e.primitive.name == "cond"]
    assert len(conds) == 1
    false_branch, true_branch = (nested(b.jaxpr) for b in conds[0].params["branches"])
    selection = {"scatter-add"}  # radix histograms
    assert not (top & selection)
    assert not (false_branch & selection)  # the ordinary step: adam on the kept entries
    assert selection <= true_branch  # radix histograms: only on mask updates
    # exact counts are computed in the program (uint32 arithmetic), no host callback
    assert "pure_callback" not in top | false_branch | true_branch


def _stack_params():
    return nn.unbox(zoo.linen_stack_params())


def test_scanned_stack_keeps_exact_counts_per_slice_and_resumes_bit_identically(tmp_path):
    params = _stack_params()
    tx = prune.rigl(optax.adam(1e-2), 0.8, end_step=20, every=3, key=KEY, where="layers/")
    update = jax.jit(tx.update)
    state = tx.init(params)
    params = prune.apply(params, prune.masks_of(state))
    fl = jtree.flatten(params)
    lays = jtree.layouts(params)
    targets = _flat(prune.erk(params, 0.8, where="layers/"))

    def run(p, s, start, stop):
        for t in range(start, stop):
            u, s = update(_grads(p, t), s, p)
            p = optax.apply_updates(p, u)
            for path, lay in zip(fl.paths, lays):
                m = _flat(prune.masks_of(s))[path]
                if m is None:
                    continue
                assert lay.n_slices == zoo.LAYERS, path
                per = _slices(m, lay).sum(axis=1)
                n = math.prod(lay.slice_shape)
                assert np.all(per == round((1 - targets[path]) * n)), (path, per)
        return p, s

    straight = run(params, state, 0, 12)
    p, s = run(params, state, 0, 6)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "c", {"params": p, "opt_state": s})
    ckpt.wait_until_finished()
    like = {"params": params, "opt_state": tx.init(params)}
    restored = ckpt.restore(tmp_path / "c", jax.tree.map(ocp.utils.to_shape_dtype_struct, like))
    ckpt.close()
    p, s = run(restored["params"], restored["opt_state"], 6, 12)
    np.testing.assert_equal(jax.device_get(p), jax.device_get(straight[0]))
    np.testing.assert_equal(jax.device_get(s), jax.device_get(straight[1]))


@pytest.mark.parametrize("framework", ["nnx_stack", "eqx_cnn", "eqx_stacked", "resnet", "vit"])
def test_every_framework_of_the_zoo_keeps_exact_counts(framework):
    if framework == "nnx_stack":
        params = nnx.to_pure_dict(nnx.state(zoo.nnx_stack(), nnx.Param))
    elif framework == "eqx_cnn":
        params = eqx.filter(zoo.EqxCNN(jax.random.key(0)), eqx.is_array)
    elif framework == "eqx_stacked":
        params = eqx.filter(zoo.EqxStacked(jax.random.key(0)), eqx.is_array)
    elif framework == "resnet":
        params = zoo.resnet_variables()["params"]
    else:
        params = zoo.vit_params()
    tx = prune.set_(optax.sgd(0.1, momentum=0.9), 0.75, end_step=10, every=2, key=KEY,
                    init="uniform")
    state = tx.init(params)
    update = jax.jit(tx.update)
    fl = jtree.flatten(params)
    lays = dict(zip(fl.paths, jtree.layouts(params)))
    p = prune.apply(params, prune.masks_of(state))
    changed = 0
    for t in range(4):
        old = _flat(prune.masks_of(state))
        u, state = update(_grads(p, t), state, p)
        p = optax.apply_updates(p, u)
        for path, m in _flat(prune.masks_of(state)).items():
            if m is None:
                continue
            lay = lays[path]
            per = _slices(m, lay).sum(axis=1)
            assert np.all(per == round(0.25 * math.prod(lay.slice_shape))), (path, per)
            assert np.all(np.asarray(_flat(p)[path])[~np.asarray(m)] == 0)
            changed += int((np.asarray(old[path]) & ~np.asarray(m)).sum())
    assert changed > 0


def test_nnx_optimizer_runs_rigl_and_ste():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(12, 32, rngs=rngs)
            self.l2 = nnx.Linear(32, 4, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 12)), jnp.float32)
    y = jnp.arange(16) % 4
    model = Net(nnx.Rngs(0))
    opt = nnx.Optimizer(model, prune.rigl(optax.adam(1e-2), 0.75, end_step=10, every=2,
                                          key=KEY, init="uniform"), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        opt.update(model, nnx.grad(loss)(model))

    for _ in range(5):
        step(model, opt)
    m = prune.masks_of(opt)
    k1 = np.asarray(m["l1"]["kernel"])
    assert k1.sum() == round(0.25 * k1.size)
    assert np.all(np.asarray(model.l1.kernel[...])[~k1] == 0)


def test_ste_gradient_is_the_dense_gradient_of_the_masked_forward_pass():
    params = _mlp_params()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((8, 12)), jnp.float32)

    def loss(p):
        h = jax.nn.relu(x @ p["a"]["kernel"] + p["a"]["bias"])
        return jnp.sum((h @ p["b"]["kernel"] + p["b"]["bias"]) ** 2)

    tx = prune.ste(optax.adam(1e-2), prune.polynomial(0.75, 0, 6))
    state = tx.init(params)
    update = jax.jit(tx.update)
    for t in range(8):
        masks = prune.masks_of(state)
        masked = prune.apply(params, masks)
        got = jax.grad(lambda p, s=state: loss(prune.ste_params(p, s)))(params)
        want = jax.grad(loss)(masked)  # the jaxpruner form: grad at the masked params
        np.testing.assert_equal(jax.device_get(got), jax.device_get(want))
        np.testing.assert_array_equal(np.asarray(prune.ste_params(params, state)["a"]["kernel"]),
                                      np.asarray(masked["a"]["kernel"]))
        u, state = update(got, state, params)
        params = optax.apply_updates(params, u)
        # dense weights stay dense; the next mask is the top-|w| of the new weights
        assert np.count_nonzero(np.asarray(params["a"]["kernel"])) == 240
        s = float(prune.polynomial(0.75, 0, 6)(t + 1))
        w = np.abs(np.asarray(params["a"]["kernel"]))
        np.testing.assert_array_equal(np.asarray(prune.masks_of(state)["a"]["kernel"]),
                                      top_k_reference([w], round((1 - s) * 240))[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [(dict(drop_fraction=0.0), "drop_fraction"), (dict(drop_fraction=1.5), "drop_fraction"),
     (dict(every=0), "every"), (dict(init="gaussian"), "init"), (dict(end_step=-1), "end_step")],
)
def test_bad_arguments_name_themselves(kwargs, match):
    args = dict(end_step=10, key=KEY) | kwargs
    for make in (prune.rigl, prune.set_):
        with pytest.raises(ValueError, match=match):
            make(optax.sgd(0.1), 0.9, **args)


def test_bad_types_and_values_elsewhere():
    with pytest.raises(TypeError, match="key"):
        prune.static(optax.sgd(0.1), 0.9, key=3)
    with pytest.raises(ValueError, match="sparsity"):
        prune.static(optax.sgd(0.1), 1.0, key=KEY)
    with pytest.raises(ValueError, match="init"):
        prune.static(optax.sgd(0.1), 0.5, key=KEY, init="normal")
    with pytest.raises(TypeError, match="schedule"):
        prune.rigl(optax.sgd(0.1), 0.5, key=KEY, end_step=5, schedule=0.3)
    with pytest.raises(ValueError, match="every"):
        prune.ste(optax.sgd(0.1), prune.constant(0.5), every=0)
    with pytest.raises(ValueError, match="score"):
        prune.ste(optax.sgd(0.1), prune.constant(0.5), score="saliency")
    tx = prune.rigl(optax.sgd(0.1), 0.5, key=KEY, end_step=5)
    params = _mlp_params()
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))
