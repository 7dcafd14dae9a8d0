"""Round trips of the .jrm container, tree structures, options, report, save/load."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_leaf
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrm import coding
from jaxrm.quant._types import Codebook, dequantize, is_quantized

KINDS = ["dense", "masked", "int", "codebook", "codebook-arg", "qarray", "qarray-masked",
         "qarray-channel"]


def expected(tree, masks):
    """What decode must give: dequantize, then zero where ``masks`` prunes."""
    out = dequantize(tree)
    return jax.tree.map(
        lambda x, m: x if m is None else jnp.where(m, x, jnp.zeros((), x.dtype)),
        out,
        masks,
        is_leaf=lambda x: x is None,
    )


def assert_bitwise(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


leaf_specs = st.tuples(
    st.sampled_from(KINDS),
    st.lists(st.integers(0, 9), min_size=1, max_size=3).map(tuple),
    st.sampled_from([0.0, 0.02, 0.3, 1.0]),
    st.integers(1, 8),
    st.sampled_from(["float32", "bfloat16", "float16"]),
)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.lists(leaf_specs, min_size=1, max_size=4),
    st.sampled_from(["huffman", "ans", "none"]),
    st.sampled_from([None, 1, 3, 8]),
)
def test_round_trip_is_bitwise(seed, specs, entropy, index_bits):
    rng = np.random.default_rng(seed)
    tree, masks = {}, {}
    for i, (kind, shape, density, bits, dtype) in enumerate(specs):
        tree[f"l{i}"], masks[f"l{i}"] = make_leaf(rng, kind, shape, density, bits, dtype)
    data = coding.encode(tree, masks=masks, entropy=entropy, index_bits=index_bits)
    ref = expected(tree, masks)
    out = coding.decode(data, like=ref)
    jax.tree.map(assert_bitwise, out, ref)
    nested = coding.decode(data)
    assert set(nested) == set(tree)
    for k in tree:
        assert_bitwise(nested[k], ref[k])
    assert coding.report(data).total.bytes == len(data)


def test_all_pruned_and_empty_leaves():
    rng = np.random.default_rng(1)
    cb, _ = make_leaf(rng, "codebook", (50, 40), 0.0, 5, "float32")
    tree = {"a": cb, "e": jnp.zeros((0, 3)), "p": jnp.ones((30, 30))}
    masks = {"a": None, "e": jnp.zeros((0, 3), bool), "p": jnp.zeros((30, 30), bool)}
    for entropy in ("huffman", "ans", "none"):
        data = coding.encode(tree, masks=masks, entropy=entropy)
        out = coding.decode(data)
        np.testing.assert_array_equal(out["a"], np.zeros((50, 40)))
        assert out["e"].shape == (0, 3)
        assert not np.any(np.asarray(out["p"]))
        assert not np.signbit(np.asarray(out["p"])).any()
        rows = {r.path: r for r in coding.report(data).rows}
        assert rows["p"].bytes <= 16  # nothing stored for pruned entries but headers
        assert rows["a"].bytes <= 4 * 32 + 32  # the centroids


def test_structures_linen_lists_and_nnx():
    from flax import nnx

    model = nnx.Sequential(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
    state = nnx.state(model, nnx.Param)
    out = coding.decode(coding.encode(state), like=state)
    assert isinstance(out, nnx.State)
    chex.assert_trees_all_equal(jax.tree.leaves(out), jax.tree.leaves(state))
    nnx.update(model, out)
    linen = {"params": {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}}
    chex.assert_trees_all_equal(coding.decode(coding.encode(linen), like=linen), linen)
    listed = [jnp.ones(2), (jnp.zeros(3), {"x": jnp.arange(4)})]
    chex.assert_trees_all_equal(coding.decode(coding.encode(listed), like=listed), listed)
    assert set(coding.decode(coding.encode(listed))) == {"0", "1"}
    root = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(coding.decode(coding.encode(root)), root)


def test_like_with_quantized_leaves_and_mismatch():
    rng = np.random.default_rng(2)
    cb, _ = make_leaf(rng, "codebook", (8, 8), 0.5, 4, "float32")
    tree = {"k": cb, "b": jnp.ones(8)}
    data = coding.encode(tree)
    out = coding.decode(data, like=tree)  # quantized leaves of like are leaves
    assert not is_quantized(out["k"])
    assert_bitwise(out["k"], cb.dequantize())
    with pytest.raises(ValueError, match="missing in the file"):
        coding.decode(data, like={"k": 0, "b": 0, "extra": 0})


def test_float64_and_ints_keep_their_dtype():
    tree = {"d": np.linspace(0, 1, 7), "i": np.arange(5, dtype=np.int64), "b": np.array([True])}
    out = coding.decode(coding.encode(tree))
    for k in tree:
        assert_bitwise(out[k], tree[k])


def test_per_leaf_index_bits_and_errors():
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.normal(size=(20, 20)), jnp.float32)
    m = jnp.asarray(rng.random((20, 20)) < 0.1)
    tree = {"a": w, "b": w}
    data = coding.encode(tree, masks={"a": m, "b": m}, index_bits={"a": 2, "b": None})
    r = {row.path: row for row in coding.report(data).rows}
    assert r["a"].index_bits_pq >= 2
    with pytest.raises(ValueError, match="'a'"):
        coding.encode(tree, masks={"a": m, "b": m}, index_bits={"a": 17, "b": None})
    with pytest.raises(ValueError, match="masks"):
        coding.encode(tree, masks={"a": m})
    with pytest.raises(ValueError, match="'b'"):
        coding.encode(tree, masks={"a": None, "b": m[:3]})
    with pytest.raises(TypeError, match="'b'"):
        coding.encode(tree, masks={"a": None, "b": jnp.ones((20, 20))})
    with pytest.raises(ValueError, match="entropy"):
        coding.encode(tree, entropy="zip")
    with pytest.raises(TypeError, match="'s'"):
        coding.encode({"s": "text"})


def test_inputs_are_not_mutated(small_tree):
    tree, masks = small_tree
    before = jax.tree.map(np.array, (tree, masks))
    coding.encode(tree, masks=masks)
    chex.assert_trees_all_equal(jax.tree.map(np.array, (tree, masks)), before)


def test_report_totals_equal_file_size(small_tree):
    tree, masks = small_tree
    for entropy in ("huffman", "ans", "none"):
        data = coding.encode(tree, masks=masks, entropy=entropy)
        rep = coding.report(data)
        assert rep.total.bytes == len(data)
        assert sum(r.bytes for r in rep.rows) + rep.overhead_bytes == len(data)
        assert coding.report(tree, masks=masks, entropy=entropy).total.bytes == len(data)
        assert "| total |" in str(rep) and "Compress rate (P+Q+H)" in rep.to_markdown()


def test_report_columns_for_a_codebook_layer():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(200, 300))
    mask = rng.random(w.shape) < 0.1
    from conftest import lloyd_codebook

    idx, cent = lloyd_codebook(w, 5, mask)
    cb = Codebook(jnp.asarray(idx), jnp.asarray(cent, jnp.float32), jnp.asarray(mask), bits=5)
    row = coding.report({"fc": cb}, index_bits=5, entropy="none").rows[0]
    kept = int(mask.sum())
    assert row.weights == w.size and row.kept == kept
    entries = kept + int(((np.diff(np.flatnonzero(mask), prepend=-1) - 1) >> 5).sum())
    assert row.index_bits_pq == pytest.approx(5 * entries / kept)
    width = 5 if entries == kept else 6  # the filler takes one more symbol
    assert row.weight_bits_pq == pytest.approx(width * entries / kept)
    assert row.original_bytes == 4 * w.size
    fixed = -(-entries * 5 // 8) + -(-entries * width // 8) + 4 * 32
    assert row.bytes == row.bytes_pq == fixed
    huff = coding.report({"fc": cb}, index_bits=5).rows[0]
    assert huff.weight_bits_pqh < huff.weight_bits_pq  # Huffman gains on k-means indices


def test_save_load_and_atomicity(tmp_path, small_tree, monkeypatch):
    tree, masks = small_tree
    path = tmp_path / "model.jrm"
    n = coding.save(path, tree, masks=masks, entropy="ans")
    assert n == os.path.getsize(path)
    jax.tree.map(assert_bitwise, coding.load(path, like=expected(tree, masks)),
                 expected(tree, masks))
    original = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        coding.save(path, {"x": jnp.ones(3)})
    assert path.read_bytes() == original  # the old file is untouched
    with pytest.raises(OSError):
        coding.save(tmp_path / "new.jrm", {"x": jnp.ones(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.jrm"]  # no temp, no partial
    monkeypatch.undo()
    with pytest.raises(TypeError):
        coding.save(tmp_path / "bad.jrm", {"x": "not an array"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.jrm"]


def test_codebook_mask_and_masks_combine_and_per_channel_qarray_masked():
    rng = np.random.default_rng(5)
    cb, _ = make_leaf(rng, "codebook", (12, 10), 0.6, 4, "bfloat16")
    qa, _ = make_leaf(rng, "qarray-channel", (6, 9), 1.0, 6, "float16")
    m_cb = jnp.asarray(rng.random((12, 10)) < 0.5)
    m_qa = jnp.asarray(rng.random((6, 9)) < 0.3)
    tree, masks = {"cb": cb, "qa": qa}, {"cb": m_cb, "qa": m_qa}
    out = coding.decode(coding.encode(tree, masks=masks, entropy="ans"))
    zero = lambda x, m: jnp.where(m, x, jnp.zeros((), x.dtype))
    assert_bitwise(out["cb"], zero(cb.dequantize(), m_cb & cb.mask))
    assert_bitwise(out["qa"], zero(qa.dequantize(), m_qa))


def test_equinox_module():
    import equinox as eqx

    model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.PRNGKey(0))
    params = eqx.filter(model, eqx.is_array)
    out = coding.decode(coding.encode(params), like=params)
    chex.assert_trees_all_equal(out, params)
    assert set(coding.decode(coding.encode(params))) == {"layers"}
