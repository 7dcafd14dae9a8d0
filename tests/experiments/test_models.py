"""The LeNets match the Caffe prototxts: parameter counts, layouts, shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import models


@pytest.mark.parametrize(
    "name, count, shapes",
    [
        ("lenet-300-100", 266_610, {
            "ip1/kernel": (784, 300), "ip1/bias": (300,), "ip2/kernel": (300, 100),
            "ip2/bias": (100,), "ip3/kernel": (100, 10), "ip3/bias": (10,)}),
        ("lenet-5", 431_080, {
            "conv1/kernel": (5, 5, 1, 20), "conv1/bias": (20,), "conv2/kernel": (5, 5, 20, 50),
            "conv2/bias": (50,), "ip1/kernel": (800, 500), "ip1/bias": (500,),
            "ip2/kernel": (500, 10), "ip2/bias": (10,)}),
    ],
)
def test_counts_and_layouts(name, count, shapes):
    p = models.init_params(name, jax.random.key(0))
    got = {"/".join(k.key for k in path): tuple(x.shape)
           for path, x in jax.tree_util.tree_leaves_with_path(p)}
    assert got == shapes
    assert sum(int(np.prod(s)) for s in got.values()) == count
    for path, x in jax.tree_util.tree_leaves_with_path(p):
        assert x.dtype == jnp.float32
        if path[-1].key == "bias":
            assert not np.any(np.asarray(x))  # Caffe's constant 0 filler
        else:  # xavier: U(-a, a), a = sqrt(3 / fan_in)
            fan_in = int(np.prod(x.shape[:-1]))
            assert np.abs(np.asarray(x)).max() <= np.sqrt(3 / fan_in) + 1e-6


def test_lenet300_is_an_mlp_with_two_relus():
    p = models.init_params("lenet-300-100", jax.random.key(1))
    x = jax.random.uniform(jax.random.key(2), (4, 28, 28, 1))
    h = x.reshape(4, -1)
    h = np.maximum(h @ p["ip1"]["kernel"] + p["ip1"]["bias"], 0)
    h = np.maximum(h @ p["ip2"]["kernel"] + p["ip2"]["bias"], 0)
    ref = h @ p["ip3"]["kernel"] + p["ip3"]["bias"]
    np.testing.assert_allclose(models.apply_fn("lenet-300-100")(p, x), ref, rtol=1e-4, atol=1e-5)


def test_lenet5_reference_forward():
    """A numpy forward of the prototxt (valid convs, no ReLU after them, 2x2 max pools)."""
    p = jax.tree.map(np.asarray, models.init_params("lenet-5", jax.random.key(3)))
    x = np.asarray(jax.random.uniform(jax.random.key(4), (2, 28, 28, 1)))

    def conv(x, k, b):
        kh, kw = k.shape[:2]
        n, h, w, _ = x.shape
        out = np.zeros((n, h - kh + 1, w - kw + 1, k.shape[3]), np.float64)
        for i in range(kh):
            for j in range(kw):
                out += np.einsum("nhwc,co->nhwo", x[:, i:i + h - kh + 1, j:j + w - kw + 1], k[i, j])
        return out + b

    def pool(x):
        n, h, w, c = x.shape
        return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

    h = pool(conv(pool(conv(x, p["conv1"]["kernel"], p["conv1"]["bias"])),
                  p["conv2"]["kernel"], p["conv2"]["bias"]))
    assert h.shape == (2, 4, 4, 50)
    h = np.maximum(h.reshape(2, -1) @ p["ip1"]["kernel"] + p["ip1"]["bias"], 0)
    ref = h @ p["ip2"]["kernel"] + p["ip2"]["bias"]
    np.testing.assert_allclose(models.apply_fn("lenet-5")(p, x), ref, rtol=1e-4, atol=1e-4)


def test_unknown_model():
    with pytest.raises(ValueError, match="model must be one of"):
        models.build("lenet-4")
