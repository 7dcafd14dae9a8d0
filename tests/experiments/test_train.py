"""The jitted epoch: scan and Python-loop modes agree; the distillation objective; translations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import models, train


def test_scan_and_loop_epochs_agree():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (256, 28, 28), dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, 10, 256).astype(np.int32))
    data = train.Data(x, y, x[:64], y[:64])
    apply = models.apply_fn("lenet-300-100")
    p = models.init_params("lenet-300-100", jax.random.key(0))
    opt = optax.sgd(0.05, momentum=0.9)
    outs = []
    for scan in (True, False):
        ep = train.make_epoch(apply, opt, batch=64, scan=scan, augment=1)
        outs.append(ep(p, opt.init(p), None, None, None, jax.random.key(1), data))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    assert not np.allclose(outs[0][0]["ip1"]["kernel"], p["ip1"]["kernel"])  # it trained


def test_distillation_epoch_loss_is_the_mixed_objective():
    # With a zero learning rate the student stays put, so the epoch's mean loss
    # is the mean over all examples of (1 - kd) * CE + kd * T^2 KL(teacher || student).
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.integers(0, 256, (128, 28, 28), dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, 10, 128).astype(np.int32))
    data = train.Data(x, y, x[:32], y[:32])
    apply = models.apply_fn("lenet-300-100")
    student = models.init_params("lenet-300-100", jax.random.key(0))
    teacher = models.init_params("lenet-300-100", jax.random.key(1))
    opt = optax.sgd(0.0)
    kd, T = 0.7, 3.0
    ep = train.make_epoch(apply, opt, batch=32, kd=kd, temperature=T)
    _, _, loss = ep(student, opt.init(student), None, None, teacher, jax.random.key(2), data)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    inputs = np.asarray(x, np.float32)[..., None] / 256
    s = np.asarray(apply(student, jnp.asarray(inputs)), np.float64)
    t = np.asarray(apply(teacher, jnp.asarray(inputs)), np.float64)
    ce = -log_softmax(s)[np.arange(128), np.asarray(y)]
    lt, ls = log_softmax(t / T), log_softmax(s / T)
    kl = T**2 * np.sum(np.exp(lt) * (lt - ls), axis=-1)
    np.testing.assert_allclose(float(loss), np.mean((1 - kd) * ce + kd * kl), rtol=1e-5)


def test_shift_is_a_translation():
    img = np.zeros((3, 28, 28), np.uint8)
    img[:, 10:14, 12:15] = np.arange(1, 13, dtype=np.uint8).reshape(4, 3)
    out = np.asarray(train._shift(jnp.asarray(img), jax.random.key(0), 2))
    for a, b in zip(img, out):
        assert a.sum() == b.sum()  # the content moved, none was lost
        ys, xs = np.nonzero(b)
        dy, dx = ys.min() - 10, xs.min() - 12
        assert abs(dy) <= 2 and abs(dx) <= 2
        np.testing.assert_array_equal(np.roll(a, (dy, dx), axis=(0, 1)), b)


def test_caffe_inv():
    f = train.caffe_inv(0.01)
    assert f(0) == 0.01
    np.testing.assert_allclose(f(10000), 0.01 * 2 ** -0.75)
