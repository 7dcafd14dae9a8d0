"""QArray masks, int4 packing, group-wise scales and per-slice codebooks through the file.

These fields come with the compressed-execution quant types; the tests run
where ``quant.QArray`` has them and are skipped before.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrm import coding
from jaxrm.quant import Codebook, QArray

FIELDS = {f.name for f in dataclasses.fields(QArray)}
needs = pytest.mark.skipif(
    not {"mask", "packed", "group_size"} <= FIELDS, reason="QArray without mask/packed/group_size"
)


def bitwise(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def _round_trips(leaf):
    data = coding.encode({"w": leaf})
    bitwise(coding.decode(data)["w"], leaf.dequantize())
    back = coding.decode(data, dequantize=False)["w"]
    bitwise(back.dequantize(), leaf.dequantize())
    assert coding.encode({"w": back}) == data
    return back


@needs
@pytest.mark.parametrize("symmetric", [True, False])
def test_packed_int4_qarray(symmetric):
    rng = np.random.default_rng(0)
    lo, hi = (-8, 8) if symmetric else (0, 16)
    ints = rng.integers(lo, hi, (6, 10)).astype(np.int8 if symmetric else np.uint8)
    from jaxrm.coding._int4 import pack_int4, unpack_int4

    np.testing.assert_array_equal(unpack_int4(pack_int4(ints)), ints)
    zp = np.zeros((6, 1), np.float32) if symmetric else np.full((6, 1), 8.0, np.float32)
    leaf = QArray(jnp.asarray(pack_int4(ints)), jnp.asarray(rng.random((6, 1)) + 0.1,
                                                            jnp.float32),
                  jnp.asarray(zp), bits=4, axis=0, packed=True)
    np.testing.assert_array_equal(leaf.integers(), ints)  # our packing is the quant packing
    back = _round_trips(leaf)
    assert back.packed and back.values.shape == (6, 5)
    np.testing.assert_array_equal(back.values, leaf.values)


@needs
def test_group_wise_scales():
    rng = np.random.default_rng(1)
    vals = rng.integers(-7, 8, (8, 10)).astype(np.int8)
    scale = (rng.random((8, 3)) + 0.1).astype(np.float32)  # groups of 4 along axis 1
    leaf = QArray(jnp.asarray(vals), jnp.asarray(scale), jnp.zeros((8, 3)), bits=4,
                  group_size=4)
    assert _round_trips(leaf).group_size == 4


@needs
def test_qarray_with_its_own_mask():
    rng = np.random.default_rng(2)
    mask = rng.random((9, 7)) < 0.3
    vals = np.where(mask, rng.integers(-7, 8, (9, 7)), 0).astype(np.int8)
    leaf = QArray(jnp.asarray(vals), jnp.full((1, 1), 0.25), jnp.full((1, 1), 1.0), bits=4,
                  mask=jnp.asarray(mask))
    back = _round_trips(leaf)
    np.testing.assert_array_equal(back.mask, mask)
    assert not np.asarray(coding.decode(coding.encode({"w": leaf}))["w"])[~mask].any()


@pytest.mark.skipif("lookup" not in dir(__import__("jaxrm.quant._types", fromlist=["x"])),
                    reason="Codebook without per-slice centroids")
@pytest.mark.parametrize("masked", [False, True])
def test_per_slice_codebooks(masked):
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 4, (3, 4, 5)).astype(np.uint8)
    cent = np.sort(rng.normal(size=(3, 1, 1, 4)), axis=-1).astype(np.float32)
    mask = jnp.asarray(rng.random((3, 4, 5)) < 0.5) if masked else None
    leaf = Codebook(jnp.asarray(idx), jnp.asarray(cent), mask, bits=2)
    back = _round_trips(leaf)
    assert back.centroids.shape == (3, 1, 1, 4)
