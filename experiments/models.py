"""LeNet-300-100 and LeNet-5 exactly as the Caffe prototxts of Han et al.

Flax Linen modules with Flax's default layouts: NHWC inputs, HWIO convolution
kernels, ``(in, out)`` dense kernels, flattening with ``x.reshape(n, -1)`` after
the last pooling. Layer names follow the prototxts (``ip1``, ``conv1``...), so
parameter paths read ``ip1/kernel``. Weights start from Caffe's ``xavier``
filler (uniform, variance 1 / fan_in) and biases from 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["MODELS", "LeNet300100", "LeNet5", "apply_fn", "build", "init_params"]

# Caffe's "xavier" filler: U(-a, a) with a = sqrt(3 / fan_in).
_xavier = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


class LeNet300100(nn.Module):
    """784-300-100-10 with ReLU after the two hidden layers (266,610 parameters)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(300, kernel_init=_xavier, name="ip1")(x))
        x = nn.relu(nn.Dense(100, kernel_init=_xavier, name="ip2")(x))
        return nn.Dense(10, kernel_init=_xavier, name="ip3")(x)


def _max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 on even sizes, as a reshape and a max.

    Equal to ``nn.max_pool(x, (2, 2), strides=(2, 2))``; its gradient is an
    elementwise select, much faster on CPU than the select-and-scatter of
    ``reduce_window``.
    """
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class LeNet5(nn.Module):
    """conv 20 5x5, pool, conv 50 5x5, pool, fc 500, ReLU, fc 10 (431,080 parameters).

    As in Caffe's ``lenet_train_test.prototxt`` there is no nonlinearity after
    the convolutions; max pooling is 2x2 with stride 2 and convolutions are
    unpadded (28 -> 24 -> 12 -> 8 -> 4).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = dict(padding="VALID", kernel_init=_xavier)
        x = nn.Conv(20, (5, 5), name="conv1", **conv)(x)
        x = _max_pool_2x2(x)
        x = nn.Conv(50, (5, 5), name="conv2", **conv)(x)
        x = _max_pool_2x2(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(500, kernel_init=_xavier, name="ip1")(x))
        return nn.Dense(10, kernel_init=_xavier, name="ip2")(x)


MODELS: dict[str, type[nn.Module]] = {"lenet-300-100": LeNet300100, "lenet-5": LeNet5}


def build(name: str) -> nn.Module:
    """Returns the model called ``name`` (a key of :data:`MODELS`)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name]()


def init_params(name: str, key: jax.Array) -> dict:
    """Returns the initial ``params`` dict of model ``name`` for 28x28x1 inputs."""
    return build(name).init(key, jnp.zeros((1, 28, 28, 1), jnp.float32))["params"]


@functools.cache
def apply_fn(name: str) -> Callable[[dict, jax.Array], jax.Array]:
    """Returns ``f(params, x) -> logits`` for model ``name``."""
    model = build(name)
    return lambda params, x: model.apply({"params": params}, x)
