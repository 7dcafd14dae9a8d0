"""Jitted training and evaluation: one compiled call per epoch.

The whole training set lives on the device as uint8; an epoch is a
``lax.scan`` over minibatches of a random permutation, so Python runs once per
epoch. The trained variables ``theta`` can be any float pytree: ``to_params``
turns ``(theta, frozen)`` into the model's parameters (for trained
quantization ``theta`` holds the centroids and ``frozen`` the integer indices)
and ``project`` is applied after every update (for pruning it zeroes the
pruned weights, so they stay exactly 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrm import distill

__all__ = [
    "Data",
    "caffe_inv",
    "device_data",
    "error_rate",
    "make_epoch",
]


class Data(NamedTuple):
    """MNIST on the device: uint8 images ``[N, 28, 28]``, int32 labels."""

    x: jax.Array
    y: jax.Array
    x_test: jax.Array
    y_test: jax.Array


def device_data(m) -> Data:
    """Puts an :class:`experiments.data.Mnist` on the default device."""
    return Data(
        jnp.asarray(m.train_images),
        jnp.asarray(np.asarray(m.train_labels, np.int32)),
        jnp.asarray(m.test_images),
        jnp.asarray(np.asarray(m.test_labels, np.int32)),
    )


def _inputs(images: jax.Array) -> jax.Array:
    return images.astype(jnp.float32)[..., None] * (1.0 / 256.0)


def caffe_inv(base_lr: float, gamma: float = 1e-4, power: float = 0.75) -> optax.Schedule:
    """Caffe's ``inv`` policy: ``base_lr * (1 + gamma * step) ** -power``."""
    return lambda step: base_lr * (1.0 + gamma * step) ** (-power)


def _shift(images: jax.Array, key: jax.Array, pixels: int) -> jax.Array:
    """Random translations by up to ``pixels`` in each direction (zero fill)."""
    n = images.shape[0]
    padded = jnp.pad(images, ((0, 0), (pixels, pixels), (pixels, pixels)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * pixels + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1]), (28, 28))
    return jax.vmap(crop)(padded, offsets)


def make_epoch(
    apply: Callable,
    optimizer: optax.GradientTransformation,
    *,
    batch: int,
    to_params: Callable = lambda theta, frozen: theta,
    project: Callable = lambda theta, masks: theta,
    kd: float = 0.0,
    temperature: float = 4.0,
    augment: int = 0,
    scan: bool = True,
) -> Callable:
    """Returns ``epoch(theta, opt_state, frozen, masks, teacher, key, data)``.

    One call trains one epoch (``N // batch`` steps over a permutation drawn
    from ``key``) and returns ``(theta, opt_state, mean_loss)``.

    Args:
      apply: ``apply(params, x) -> logits``.
      optimizer: an optax transformation over ``theta``.
      batch: minibatch size.
      to_params: ``(theta, frozen) -> params`` for ``apply``.
      project: ``(theta, masks) -> theta`` applied after each update.
      kd: weight of the distillation term ``jaxrm.distill.kd`` (0 disables
        it); the cross-entropy gets ``1 - kd``.
      temperature: distillation temperature.
      augment: random translation in pixels (0 disables it).
      scan: run the epoch as one ``lax.scan`` (best for MLPs); ``False`` runs
        a jitted step per minibatch from Python, which is several times faster
        for convolutions on CPU (XLA runs convolutions inside loops slowly).
    """

    def loss_fn(theta, frozen, teacher, x, y):
        logits = apply(to_params(theta, frozen), x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        if kd:
            t_logits = jax.lax.stop_gradient(apply(teacher, x))
            loss = (1.0 - kd) * loss + kd * distill.kd(logits, t_logits, temperature)
        return loss.mean()

    def step(carry, inp, frozen, masks, teacher, data):
        theta, opt_state = carry
        idx, k = inp
        images = data.x[idx]
        if augment:
            images = _shift(images, k, augment)
        loss, grads = jax.value_and_grad(loss_fn)(
            theta, frozen, teacher, _inputs(images), data.y[idx]
        )
        updates, opt_state = optimizer.update(grads, opt_state, theta)
        theta = project(optax.apply_updates(theta, updates), masks)
        return (theta, opt_state), loss

    def plan(key, n):
        steps = n // batch
        k_perm, k_aug = jax.random.split(key)
        order = jax.random.permutation(k_perm, n)[: steps * batch].reshape(steps, batch)
        return order, jax.random.split(k_aug, steps)

    if not scan:
        plan_jit = jax.jit(plan, static_argnums=1)
        step_jit = jax.jit(step)

        def epoch_loop(theta, opt_state, frozen, masks, teacher, key, data: Data):
            order, aug_keys = plan_jit(key, data.x.shape[0])
            carry, losses = (theta, opt_state), []
            for i in range(order.shape[0]):
                carry, loss = step_jit(carry, (order[i], aug_keys[i]), frozen, masks, teacher,
                                       data)
                losses.append(loss)
            return carry[0], carry[1], jnp.mean(jnp.stack(losses))

        return epoch_loop

    @jax.jit
    def epoch(theta, opt_state, frozen, masks, teacher, key, data: Data):
        order, aug_keys = plan(key, data.x.shape[0])

        def body(carry, inp):
            return step(carry, inp, frozen, masks, teacher, data)

        (theta, opt_state), losses = jax.lax.scan(body, (theta, opt_state), (order, aug_keys))
        return theta, opt_state, losses.mean()

    return epoch


def error_rate(apply: Callable, params: Any, data: Data, *, batch: int = 1000) -> float:
    """Test error (fraction misclassified) of ``params`` on the test images."""
    x, y = data.x_test, data.y_test
    n = x.shape[0]
    full = (n // batch) * batch
    wrong = 0
    if full:
        wrong += int(_errors_jit(apply, batch)(params, x[:full], y[:full]))
    if full < n:
        rest = n - full
        wrong += int(_errors_jit(apply, rest)(params, x[full:], y[full:]))
    return wrong / n


_cache: dict = {}


def _errors_jit(apply, batch):
    key = (apply, batch)
    if key not in _cache:

        @jax.jit
        def f(params, x, y):
            xb = x.reshape(-1, batch, *x.shape[1:])
            preds = jax.lax.map(lambda b: apply(params, _inputs(b)).argmax(-1), xb)
            return jnp.sum(preds.reshape(-1) != y)

        _cache[key] = f
    return _cache[key]
