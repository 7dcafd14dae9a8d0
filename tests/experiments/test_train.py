"""The jitted epoch: scan and Python-loop modes agree; distillation loss; translations."""

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


def test_kd_loss_matches_numpy():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(5, 10)), rng.normal(size=(5, 10))
    T = 3.0

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    pt, ps = softmax(t / T), softmax(s / T)
    ref = T**2 * np.sum(pt * (np.log(pt) - np.log(ps)), axis=-1)
    np.testing.assert_allclose(train.kd_loss(jnp.asarray(s), jnp.asarray(t), T), ref, rtol=1e-5)
    assert np.allclose(train.kd_loss(jnp.asarray(t), jnp.asarray(t), T), 0, atol=1e-6)


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
