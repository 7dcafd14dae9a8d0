"""RigL and SET side by side with jaxpruner's own, where its source can be imported.

jaxpruner (google-research/jaxpruner) has no installable distribution for
Python 3.11: set ``JAXRM_JAXPRUNER_SRC`` to a directory holding its
``jaxpruner`` package (and have ``ml_collections`` importable); otherwise the
tests skip. jaxpruner still calls ``jax.tree_map``, which jax has removed, and
relies on a ``None`` mask in its first tree standing for a leaf left alone; the
fixture supplies such a ``tree_map`` while the tests run.

Compared on the same model, params, gradients and starting mask: the ERK
targets, the connections dropped per update (the same count and the same
ones), the connections grown, and the sparsity after the update; then a short
training run of each on the same data, whose accuracies must agree within
noise. jaxpruner may grow back a connection it has just dropped (it ranks
them with the inactive ones); jaxrm never does, so where jaxpruner does,
jaxrm grows that many other inactive connections instead.
"""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrm import prune

SRC = os.environ.get("JAXRM_JAXPRUNER_SRC")


def _old_tree_map(f, tree, *rest, is_leaf=None):
    """``jax.tree_map`` as jaxpruner expects it: a ``None`` in the first tree maps to ``None``."""
    def leaf(x):
        return x is None or (is_leaf is not None and is_leaf(x))

    return jax.tree.map(lambda x, *r: None if x is None else f(x, *r), tree, *rest,
                        is_leaf=leaf)


@pytest.fixture(scope="module")
def jaxpruner():
    if not SRC or not os.path.isdir(os.path.join(SRC, "jaxpruner")):
        pytest.skip("set JAXRM_JAXPRUNER_SRC to a jaxpruner source checkout to compare")
    added = not hasattr(jax, "tree_map")
    if added:
        jax.tree_map = _old_tree_map
    sys.path.insert(0, SRC)
    try:
        import jaxpruner as jp
    except ImportError as e:  # e.g. ml_collections missing
        pytest.skip(f"jaxpruner could not be imported from {SRC}: {e}")
    yield jp
    sys.path.remove(SRC)
    if added:
        del jax.tree_map


def _params(seed):
    rng = np.random.default_rng(seed)
    return {"l1": {"kernel": jnp.asarray(rng.standard_normal((64, 48)), jnp.float32),
                   "bias": jnp.zeros(48)},
            "l2": {"kernel": jnp.asarray(rng.standard_normal((48, 10)), jnp.float32),
                   "bias": jnp.zeros(10)}}


def _updater(jp, method, sparsity, end, every):
    from jaxpruner import sparsity_distributions

    cls = jp.RigL if method == "rigl" else jp.SET
    return cls(
        scheduler=jp.PeriodicSchedule(update_freq=every, update_start_step=0,
                                      update_end_step=end),
        sparsity_distribution_fn=functools.partial(sparsity_distributions.erk,
                                                   sparsity=sparsity),
        drop_fraction_fn=optax.cosine_decay_schedule(0.3, end),
        rng_seed=jax.random.PRNGKey(0),
    )


def test_erk_targets_match(jaxpruner):
    from jaxpruner import sparsity_distributions

    params = _params(0)
    theirs = sparsity_distributions.erk(params, sparsity=0.9)
    ours = prune.erk(params, 0.9)
    # jaxpruner budgets floor(s * n) zeros per layer, jaxrm s * n exactly: the targets
    # agree to within one weight of the smaller layer.
    for name in ("l1", "l2"):
        assert ours[name]["kernel"] == pytest.approx(float(theirs[name]["kernel"]),
                                                     abs=1 / 480)
        assert ours[name]["bias"] is None and theirs[name]["bias"] is None


@pytest.mark.parametrize("method", ["rigl", "set"])
@pytest.mark.parametrize("step", [0, 10, 20])
def test_one_update_drops_and_grows_like_jaxpruner(jaxpruner, method, step):
    params = _params(step)
    make = prune.rigl if method == "rigl" else prune.set_
    ours = make(optax.sgd(0.1), 0.8, end_step=30, every=10, key=jax.random.key(step))
    state = ours.init(params)
    params = prune.apply(params, prune.masks_of(state))
    state = state._replace(count=jnp.int32(step))
    grads = jax.tree.map(lambda x: x + 0.01, _params(100 + step))

    updater = _updater(jaxpruner, method, 0.8, 30, 10)
    kept_after_drop = []

    def recording_topk(scores, sparsity):
        mask = jaxpruner.mask_calculator.topk_mask_calculator(scores, sparsity)
        kept_after_drop.append(int(mask.sum()))
        return mask

    updater.topk_fn = recording_topk
    theirs = updater.wrap_optax(optax.sgd(0.1)).init(params)
    masks = prune.masks_of(state)
    theirs = theirs._replace(
        masks=jax.tree.map(lambda m: None if m is None else m.astype(jnp.uint8), masks,
                           is_leaf=lambda x: x is None),
        count=jnp.int32(step),
    )
    new_theirs = updater.update_state(theirs, params, grads)
    _, new_state = ours.update(grads, state, params)
    frac = float(optax.cosine_decay_schedule(0.3, 30)(step))
    calls = kept_after_drop[2:]  # the first two top-k calls are init's masks
    for j, name in enumerate(("l1", "l2")):
        old = np.asarray(masks[name]["kernel"])
        mine = np.asarray(new_state.masks[name]["kernel"])
        jp_mask = np.asarray(new_theirs.masks[name]["kernel"]).astype(bool)
        active = int(old.sum())
        jp_dropped = active - calls[2 * j]  # per leaf: the drop's top-k, then the growth's
        my_dropped = int((old & ~mine).sum())
        assert mine.sum() == active  # exact sparsity
        assert my_dropped == active - round((1 - np.float32(frac)) * active)
        assert int(jp_mask.sum()) == active and my_dropped == jp_dropped
        jp_survivors = old & jp_mask
        jp_regrown = int(jp_survivors.sum()) - (active - jp_dropped)  # just dropped, regrown
        if method == "rigl" and jp_regrown == 0:
            np.testing.assert_array_equal(mine, jp_mask)  # the same drop and growth
        print(f"{method} step {step} {name}: active {active}, dropped: jaxrm {my_dropped}, "
              f"jaxpruner {jp_dropped}; active after: jaxrm {int(mine.sum())}, jaxpruner "
              f"{int(jp_mask.sum())}; jaxpruner regrew {jp_regrown} it had just dropped")


def _task(seed, n=512):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((64, 10))
    x = rng.standard_normal((n, 64)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray((x @ w).argmax(-1))


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_training_accuracy_agrees_within_noise(jaxpruner, method):
    x, y = _task(0)
    steps, every, end = 300, 25, 225

    def loss(p, xb, yb):
        h = jax.nn.relu(xb @ p["l1"]["kernel"] + p["l1"]["bias"])
        logits = h @ p["l2"]["kernel"] + p["l2"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def accuracy(p):
        h = jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"])
        return float(((h @ p["l2"]["kernel"] + p["l2"]["bias"]).argmax(-1) == y).mean())

    def train(tx, post, p):
        state = tx.init(p)

        @jax.jit
        def step(p, state, i):
            idx = (jnp.arange(64) + 64 * i) % x.shape[0]
            g = jax.grad(loss)(p, x[idx], y[idx])
            u, state = tx.update(g, state, p)
            return post(optax.apply_updates(p, u), state), state

        for i in range(steps):
            p, state = step(p, state, i)
        return accuracy(p)

    accs = {"jaxrm": [], "jaxpruner": []}
    for seed in range(3):
        p0 = jax.tree.map(lambda a: a * 0.2, _params(seed))
        make = prune.rigl if method == "rigl" else prune.set_
        ours = make(optax.adam(1e-2), 0.9, end_step=end, every=every, key=jax.random.key(seed))
        accs["jaxrm"].append(train(ours, lambda p, s: p, p0))
        updater = _updater(jaxpruner, method, 0.9, end, every)
        updater.rng_seed = jax.random.PRNGKey(seed)
        theirs = updater.wrap_optax(optax.adam(1e-2))
        accs["jaxpruner"].append(train(theirs, updater.post_gradient_update, p0))
    mine, jp = np.mean(accs["jaxrm"]), np.mean(accs["jaxpruner"])
    noise = 3 * max(np.std(accs["jaxrm"]), np.std(accs["jaxpruner"]), 0.01)
    print(f"{method}: jaxrm {accs['jaxrm']}, jaxpruner {accs['jaxpruner']}")
    assert abs(mine - jp) <= noise, accs
