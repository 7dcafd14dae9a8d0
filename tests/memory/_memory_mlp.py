"""A small MLP, its loss and an Adam training step, shared by the sharding tests."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax


def init_mlp(seed, sizes):
    # numpy initialisation: identical on every process, no per-op compilation
    rng = np.random.default_rng(seed)
    return {
        f"Dense_{i}": {
            "kernel": (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
            "bias": np.zeros((b,), np.float32),
        }
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    }


def make_batch(seed, n, d_in, d_out):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, d_in)).astype(np.float32),
        rng.standard_normal((n, d_out)).astype(np.float32),
    )


def mlp_loss(params, batch):
    x, y = batch
    n = len(params)
    for i in range(n):
        layer = params[f"Dense_{i}"]
        x = x @ layer["kernel"] + layer["bias"]
        if i < n - 1:
            x = jax.nn.gelu(x)
    return jnp.mean((x - y) ** 2)


OPT = optax.adam(1e-2)


def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(params, batch)
    updates, opt_state = OPT.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
