"""Answers that must not depend on the path taken: jit or eager, dtype, ties at zero."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrm import prune


def test_saliency_ties_at_zero_never_revive_pruned_weights():
    params = {"Dense_0": {"kernel": jnp.ones((2, 4), jnp.float32)}}
    opt = prune.sparsify(optax.sgd(0.0), prune.one_shot(0.25, at=1), score="saliency", every=1)
    state = opt.init(params)
    update = jax.jit(opt.update)
    grads = [
        np.ones((2, 4), np.float32),
        np.asarray([[0.1, 0.2, 1, 1], [1, 1, 1, 1]], np.float32),  # prunes entries 0 and 1
        np.zeros((2, 4), np.float32),  # every score is 0: kept and pruned entries tie
        np.zeros((2, 4), np.float32),
    ]
    seen = []
    for g in grads:
        updates, state = update({"Dense_0": {"kernel": jnp.asarray(g)}}, state, params)
        params = optax.apply_updates(params, updates)
        seen.append(np.asarray(prune.masks_of(state)["Dense_0"]["kernel"]).ravel())
    np.testing.assert_array_equal(seen[1], [0, 0, 1, 1, 1, 1, 1, 1])
    for m in seen[2:]:
        np.testing.assert_array_equal(m, seen[1])  # the pruned pair stays pruned
    assert np.all(np.asarray(params["Dense_0"]["kernel"]).ravel()[:2] == 0)


def test_float64_scores_are_ranked_exactly():
    x = 1.0 + np.arange(1000, dtype=np.float64) * 1e-12  # all equal in float32
    m = np.asarray(prune.masks({"w": x.reshape(20, 50)}, 0.9, where="w")["w"]).ravel()
    np.testing.assert_array_equal(np.flatnonzero(m), np.arange(900, 1000))
