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


def test_traced_kept_counts_match_exact_rational_rounding():
    # round((1 - s) * n) of a float32 s, half to even, in the program's uint32
    # arithmetic, against Python's rational arithmetic, over random sparsities,
    # dyadic ones (exact halves), edge values and n up to 2^31 - 1.
    import fractions

    from jaxrm.prune import _leaves

    rng = np.random.default_rng(0)
    m = 4000
    s = np.concatenate([
        rng.random(m), rng.integers(0, 1 << 12, m) / 4096, rng.integers(0, 1 << 22, m) / 2**22,
        [0.5, 0.25, 0.75, 0.1, 0.9, 0.999, 1e-8, 1e-30, 1e-45, 0.0, -0.0, np.nan, -1.0, 1.0,
         2.0, np.inf, 0.5 - 2**-25, 1 - 2**-24],
    ]).astype(np.float32)
    ns = rng.integers(0, 1 << 31, s.size)
    ns[::2] = rng.integers(0, 5000, ns[::2].size)
    ns[:50] = (1 << 31) - 1

    def exact(a, n):
        if np.isnan(a) or a <= 0:
            return n
        if a >= 1:
            return 0
        return round((1 - fractions.Fraction(float(a))) * n)

    want = np.asarray([exact(a, int(n)) for a, n in zip(s, ns)])
    got = jax.jit(lambda v: _leaves._exact_counts_device(v, ns))(s)
    np.testing.assert_array_equal(np.asarray(got), want)
    # kept_counts hands traced sparsities to it
    few = jax.jit(lambda v: jnp.stack(_leaves.kept_counts(list(v), list(ns[-20:]))))(s[-20:])
    np.testing.assert_array_equal(np.asarray(few), want[-20:])
