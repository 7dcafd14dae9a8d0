"""Relative indices with filler zeros (Deep Compression, Figure 2)."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrm import coding
from jaxrm.coding import _sparse


def test_figure_2_filler_zero():
    # kept at 1 and 12 with 3-bit indices: the gap of 11 exceeds 8, so a filler
    # entry is stored 8 positions after the first, then the rest of the gap.
    mask = np.zeros(16, bool)
    mask[[1, 12]] = True
    codes, real = _sparse.relative_indices(_sparse.gaps(mask), 3)
    np.testing.assert_array_equal(codes, [1, 7, 2])
    np.testing.assert_array_equal(real, [0, 2])
    np.testing.assert_array_equal(_sparse.positions(codes, 16), [1, 9, 12])


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.floats(0.0, 1.0))
def test_fillers_follow_the_rule(seed, bits, density):
    rng = np.random.default_rng(seed)
    mask = rng.random(500) < density**3
    gap = _sparse.gaps(mask)
    codes, real = _sparse.relative_indices(gap, bits)
    pos = _sparse.positions(codes, 500)
    np.testing.assert_array_equal(pos[real], np.flatnonzero(mask))
    # every step is at most 2**bits; the fillers are exactly those that a long
    # gap needs, each a full step of 2**bits
    assert np.all(np.diff(pos, prepend=-1) <= 2**bits)
    fillers = np.setdiff1d(np.arange(len(codes)), real)
    assert np.all(codes[fillers] == 2**bits - 1)
    assert len(fillers) == int(np.sum(np.ceil(gap / 2**bits) - 1))


def test_long_gap_round_trip_through_the_file():
    w = np.zeros((40, 50), np.float32)
    w[0, 3] = 1.5
    w[39, 49] = -2.0  # a gap of 1996 at 3 bits: 249 fillers
    mask = w != 0
    data = coding.encode({"w": w}, masks={"w": mask}, index_bits=3, entropy="none")
    r = coding.report(data).rows[0]
    assert r.kept == 2
    assert r.index_bits_pq == 3 * (2 + 1995 // 8) / 2
    out = coding.decode(data)["w"]
    np.testing.assert_array_equal(np.asarray(out), w)
    assert not np.signbit(np.asarray(out)[~mask]).any()  # pruned entries are +0


def test_auto_index_bits_minimizes_the_fixed_width_size():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(64, 96)).astype(np.float32)
    mask = rng.random(w.shape) < 0.08
    tree = {"w": jnp.asarray(w)}

    def stored(**kw):  # section bytes (the manifest's digits vary with the width)
        r = coding.report(coding.encode(tree, masks={"w": mask}, entropy="none", **kw))
        return r.total.bytes - r.overhead_bytes

    sizes = [stored(index_bits=b) for b in range(1, 17)]
    assert stored() <= min(sizes) + 1  # +1: the estimate counts bits, files count bytes
    assert stored() < max(sizes)
