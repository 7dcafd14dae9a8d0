"""Container behaviour: saves, the compressed tree back, auto-sparse floats, small leaves, ANS."""

import os
import stat
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import lloyd_codebook, make_leaf
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrm import coding
from jaxrm.coding import _decode, _encode
from jaxrm.quant import Codebook, QArray

# ------------------------------------------------------------------ saves


def test_save_keeps_the_mode_and_follows_the_umask(tmp_path):
    path = tmp_path / "m.jrm"
    old = os.umask(0o027)
    try:
        coding.save(path, {"x": jnp.ones(3)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    os.chmod(path, 0o644)
    coding.save(path, {"x": jnp.zeros(3)})  # 0.1 made an overwritten 0644 file 0600
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_save_fsyncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    coding.save(tmp_path / "m.jrm", {"x": jnp.ones(3)})
    assert synced == [False, True]  # the file, then its directory


def test_save_through_a_symlink_replaces_its_target(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    target = store / "real.jrm"
    coding.save(target, {"x": jnp.ones(2)})
    link = tmp_path / "link.jrm"
    link.symlink_to(target)
    coding.save(link, {"x": jnp.zeros(2)})
    assert link.is_symlink()  # 0.1 replaced the link by a regular file
    np.testing.assert_array_equal(coding.load(target)["x"], np.zeros(2))
    assert sorted(p.name for p in store.iterdir()) == ["real.jrm"]


def test_stale_temporary_files_are_removed_by_the_next_save(tmp_path):
    stale = tmp_path / ".m.jrm.jrm-killed.tmp"
    stale.write_bytes(b"x" * 1000)  # what a killed save leaves
    os.utime(stale, (0, 0))
    fresh = tmp_path / ".m.jrm.jrm-live.tmp"
    fresh.write_bytes(b"y")  # another process may be writing this one right now
    other = tmp_path / "notes.tmp"
    other.write_bytes(b"z")
    coding.save(tmp_path / "m.jrm", {"x": jnp.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.jrm.jrm-live.tmp", "m.jrm",
                                                          "notes.tmp"]


def test_a_locked_temporary_file_is_left_alone(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    busy = tmp_path / ".m.jrm.jrm-busy.tmp"
    busy.write_bytes(b"x")
    os.utime(busy, (0, 0))
    with open(busy, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # a slow writer still holds it
        coding.save(tmp_path / "m.jrm", {"x": jnp.ones(2)})
        assert busy.exists()


# ------------------------------------------------------- the compressed tree


def test_decode_without_dequantizing_gives_the_stored_leaves():
    rng = np.random.default_rng(0)
    cb, _ = make_leaf(rng, "codebook", (12, 10), 0.4, 4, "bfloat16")
    qa, _ = make_leaf(rng, "qarray-channel", (6, 9), 1.0, 6, "float16")
    tree = {"cb": cb, "qa": qa, "b": jnp.arange(3.0)}
    data = coding.encode(tree)
    out = coding.decode(data, like=tree, dequantize=False)
    assert isinstance(out["cb"], Codebook) and isinstance(out["qa"], QArray)
    np.testing.assert_array_equal(out["cb"].mask, cb.mask)
    kept = np.asarray(cb.mask)
    np.testing.assert_array_equal(np.asarray(out["cb"].indices)[kept], np.asarray(cb.indices)[kept])
    assert out["cb"].indices.dtype == cb.indices.dtype and out["cb"].bits == cb.bits
    assert out["cb"].dtype == "bfloat16" and out["qa"].axis == qa.axis
    for f in ("values", "scale", "zero_point"):
        np.testing.assert_array_equal(getattr(out["qa"], f), getattr(qa, f))
    np.testing.assert_array_equal(out["b"], tree["b"])
    # and back: the compressed tree encodes to the same file
    assert coding.encode(out) == data


def test_a_pruned_qarray_comes_back_with_its_mask():
    rng = np.random.default_rng(1)
    qa, mask = make_leaf(rng, "qarray-masked", (8, 8), 0.3, 4, "float32")
    data = coding.encode({"q": qa}, masks={"q": mask})
    if not _decode.QARRAY_HAS_MASK:
        with pytest.raises(ValueError, match="mask field"):
            coding.decode(data, dequantize=False)
        return
    out = coding.decode(data, dequantize=False)["q"]
    np.testing.assert_array_equal(out.mask, mask)
    np.testing.assert_array_equal(np.asarray(out.values)[mask], np.asarray(qa.values)[mask])
    np.testing.assert_array_equal(out.dequantize(), coding.decode(data)["q"])


def test_a_qarray_that_carries_a_mask_is_stored_sparse():
    rng = np.random.default_rng(2)
    qa, mask = make_leaf(rng, "qarray-masked", (8, 8), 0.3, 4, "float32")
    if not _decode.QARRAY_HAS_MASK:
        pytest.skip("this QArray has no mask field yet")
    own = QArray(qa.values, qa.scale, qa.zero_point, bits=qa.bits, axis=qa.axis, mask=mask)
    assert coding.encode({"q": own}) == coding.encode({"q": qa}, masks={"q": mask})


# ------------------------------------------------- zeros without masks


def test_pruned_floats_without_masks_are_stored_sparse_and_bitwise():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(64, 64)).astype(np.float32)
    mask = rng.random(w.shape) < 0.1
    w = np.where(mask, w, 0.0).astype(np.float32)
    w[0, 0] = -0.0
    with_masks = coding.encode({"w": w}, masks={"w": mask})
    without = coding.encode({"w": w})  # 0.1 stored this dense (4.5x larger)
    assert len(without) <= 1.1 * len(with_masks)
    out = np.asarray(coding.decode(without)["w"])
    np.testing.assert_array_equal(out.view(np.uint32), w.view(np.uint32))  # -0.0 kept
    assert coding.report(without).rows[0].kind == "sparse"
    dense = rng.normal(size=(64, 64)).astype(np.float32)  # no zeros: stays raw
    assert coding.report({"w": dense}).rows[0].kind == "raw"


# ------------------------------------------------------- small leaves, ANS


def _small_leaves(n_leaves, seed=0):
    rng = np.random.default_rng(seed)
    tree, ideal = {}, 0.0
    for i in range(n_leaves):
        idx, cent = lloyd_codebook(rng.normal(size=(32, 32)), 5, iters=2)
        tree[f"layer{i}/w"] = Codebook(idx, cent.astype(np.float32), bits=5)
        c = np.bincount(idx.reshape(-1))
        c = c[c > 0]
        ideal += 4 * len(cent) + float(-(c * np.log2(c / c.sum())).sum()) / 8
    return tree, ideal


@pytest.mark.parametrize("entropy", ["huffman", "ans"])
def test_small_leaves_cost_under_64_bytes_each(entropy):
    tree, ideal = _small_leaves(256)
    data = coding.encode(tree, entropy=entropy)
    # against each leaf's centroids plus its indices at their own empirical entropy
    assert (len(data) - ideal) / len(tree) < 64  # 0.1: about 645 bytes per leaf
    out = coding.decode(data)
    np.testing.assert_array_equal(out["layer7"]["w"], tree["layer7/w"].dequantize())


def _conv_fc_model(seed):
    """Conv + fc kernels pruned to ~92% with 5-bit codebooks, biases dense."""
    rng = np.random.default_rng(seed)
    tree = {}
    for name, shape in [("conv1", (5, 5, 1, 20)), ("conv2", (5, 5, 20, 50)),
                        ("fc1", (800, 500)), ("fc2", (500, 10))]:
        w = rng.normal(size=shape)
        m = rng.random(shape) < 0.08
        idx, cent = lloyd_codebook(w, 5, m, iters=2)
        tree[name] = {"kernel": Codebook(idx, cent.astype(np.float32), m, bits=5),
                      "bias": rng.normal(size=shape[-1]).astype(np.float32)}
    return tree


def test_ans_is_never_larger_than_huffman_on_a_pruned_model():
    tree = _conv_fc_model(0)
    huff, ans = coding.encode(tree), coding.encode(tree, entropy="ans")
    assert len(ans) <= len(huff)  # 0.1: 39.7x vs 39.8x, ANS larger
    jax.tree.map(np.testing.assert_array_equal, coding.decode(ans), coding.decode(huff))


def test_ans_skips_the_huffman_file_where_its_lower_bound_is_larger(monkeypatch):
    # Big 5-bit codebook streams: rANS gains more than the manifest and lane
    # offsets cost, so the Huffman file's lower bound already exceeds the ANS
    # file and it is not written.
    rng = np.random.default_rng(3)
    tree = {}
    for name, shape in [("fc1", (784, 300)), ("fc2", (300, 100))]:
        w = rng.normal(size=shape)
        m = rng.random(shape) < 0.5
        idx, cent = lloyd_codebook(w, 5, m, iters=2)
        tree[name] = {"kernel": Codebook(idx, cent.astype(np.float32), m, bits=5)}
    huff = coding.encode(tree)
    calls = []
    finish = _encode._Writer.finish
    monkeypatch.setattr(_encode._Writer, "finish", lambda w, e: calls.append(1) or finish(w, e))
    ans = coding.encode(tree, entropy="ans")
    assert len(calls) == 1 and len(ans) < len(huff)
    jax.tree.map(np.testing.assert_array_equal, coding.decode(ans), coding.decode(huff))


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(
    st.sampled_from(["codebook", "codebook-arg", "qarray", "qarray-masked", "masked", "dense"]),
    st.lists(st.integers(1, 40), min_size=1, max_size=2).map(tuple),
    st.sampled_from([0.05, 0.5, 1.0]), st.integers(1, 6)), min_size=1, max_size=6))
def test_ans_never_larger_than_huffman_property(seed, specs):
    rng = np.random.default_rng(seed)
    tree, masks = {}, {}
    for i, (kind, shape, density, bits) in enumerate(specs):
        tree[f"l{i}"], masks[f"l{i}"] = make_leaf(rng, kind, shape, density, bits, "float32")
    assert len(coding.encode(tree, masks=masks, entropy="ans")) <= len(
        coding.encode(tree, masks=masks))


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(
    st.sampled_from(["codebook", "codebook-arg", "qarray", "qarray-masked", "masked", "dense"]),
    st.lists(st.integers(1, 40), min_size=1, max_size=2).map(tuple),
    st.sampled_from([0.05, 0.5, 1.0]), st.integers(1, 6)), min_size=1, max_size=6),
    st.sampled_from(["huffman", "none"]))
def test_the_huffman_twin_is_the_huffman_file(seed, specs, other):
    # Where no rANS estimate chose a layout, the twin reuses the ANS plan with
    # its codecs changed; either way it is byte for byte the Huffman file.
    rng = np.random.default_rng(seed)
    tree, masks = {}, {}
    for i, (kind, shape, density, bits) in enumerate(specs):
        tree[f"l{i}"], masks[f"l{i}"] = make_leaf(rng, kind, shape, density, bits, "float32")
    rules = [("l0", other), (".*", "ans")]
    files, plans = [], []
    finish, planned = _encode._Writer.finish, _encode._planned
    with mock.patch.object(_encode._Writer, "finish",
                           lambda w, e: files.append(finish(w, e)) or files[-1]), \
         mock.patch.object(_encode, "_planned", lambda p: plans.append(1) or planned(p)):
        ans = coding.encode(tree, masks=masks, entropy=rules)
    huff = coding.encode(tree, masks=masks, entropy=[("l0", other), (".*", "huffman")])
    assert len(ans) <= len(huff) and ans == min(files, key=len)
    if len(files) == 2:  # not skipped by its lower bound
        assert files[1] == huff
    if all(k in ("qarray", "dense") for k, *_ in specs):  # no mask: no index width to choose
        assert len(plans) == 1


def test_many_small_dense_leaves_plan_once():
    tree, _ = _small_leaves(64)
    files = []
    finish = _encode._Writer.finish
    with mock.patch.object(_encode._Writer, "finish",
                           lambda w, e: files.append(finish(w, e)) or files[-1]), \
         mock.patch.object(_encode, "_planned", wraps=_encode._planned) as planned:
        ans = coding.encode(tree, entropy="ans")
    assert planned.call_count == 1 and len(files) == 2  # the twin is written, not planned
    assert files[1] == coding.encode(tree) and len(ans) <= len(files[1])


# ------------------------------------------------------- per-leaf settings


def test_per_leaf_entropy_and_index_bits_rules():
    tree = _conv_fc_model(1)
    data = coding.encode(tree, entropy=[("conv", "none"), (".*", "huffman")],
                         index_bits=[("fc1", 4), (".*", None)])
    rows = {r.path: r for r in coding.report(data).rows}
    assert rows["fc1/kernel"].index_bits_pq >= 4
    by_fn = coding.encode(tree, entropy=lambda p, leaf: "none" if "conv" in p else "huffman",
                          index_bits=lambda p, leaf: 4 if "fc1" in p else None)
    assert by_fn == data
    with pytest.raises(ValueError, match="conv1/"):
        coding.encode(tree, entropy=[("conv", "zip"), (".*", "huffman")])


# ------------------------------------------------------- stacked rows


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return nn.relu(nn.Dense(8)(x)), None


class _Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
        scan = nn.scan(_Block, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=4, metadata_params={nn.PARTITION_NAME: "layers"})
        return scan(name="blocks")(x, None)[0]


def test_report_rows_per_stacked_slice_of_a_scanned_stack():
    params = _Stack().init(jax.random.PRNGKey(0), jnp.ones((1, 8)))["params"]
    kernel = np.asarray(nn.unbox(params)["blocks"]["Dense_0"]["kernel"])  # (4, 8, 8)
    rng = np.random.default_rng(4)
    mask = rng.random(kernel.shape) < np.array([0.9, 0.5, 0.2, 0.05])[:, None, None]
    idx, cent = lloyd_codebook(kernel, 3, mask, iters=2)
    tree = {"blocks": {"Dense_0": {"kernel": Codebook(idx, cent.astype(np.float32), mask, bits=3),
                                   "bias": np.asarray(nn.unbox(params)["blocks"]["Dense_0"]
                                                      ["bias"])}}}
    data = coding.encode(tree)
    for rep in (coding.report(data, stacked={"blocks/Dense_0/kernel": 0}),
                coding.report(tree, stacked=[("kernel", 0), (".*", None)])):
        rows = {r.path: r for r in rep.rows}
        for i in range(4):  # exact per-layer counts, against numpy slicing the stacked axis
            row = rows[f"blocks/Dense_0/kernel[{i}]"]
            assert row.weights == 64 and row.kept == int(mask[i].sum())
        # the scanned bias is stacked too where the layouts say so (the tree form)
        assert sum(r.weights for p, r in rows.items() if "bias" in p) == 32
        assert rep.total.bytes == len(data)
        assert rep.total.kept == int(mask.sum()) + 32
