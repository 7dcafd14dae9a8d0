"""Stacked leaves with a codebook per slice: a stream (code table) per slice where smaller."""

import copy

import jax.numpy as jnp
import numpy as np
import pytest
from jrm_craft import join, split

from jaxrm import coding, prune, quant
from jaxrm.coding import FormatError, _leaves


def _stack(rng, layers=3, side=160):
    """Scanned-layer weights whose layers differ in shape: normal, Laplace, Student-t(3)."""
    draws = (rng.standard_normal, rng.laplace, lambda size: rng.standard_t(3, size=size))
    w = np.stack([draws[i % 3](size=(side, side)) for i in range(layers)]).astype(np.float32)
    return {"blocks": {"kernel": jnp.asarray(w)}}


@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize("entropy", ["huffman", "ans"])
def test_per_slice_streams_are_smaller_and_exact(entropy, pruned, monkeypatch):
    params = _stack(np.random.default_rng(0))
    masks = prune.masks(prune.magnitude(params), 0.3, stacked=0) if pruned else None
    tree = quant.kmeans(params, 5, masks=masks, stacked=0)
    cb = tree["blocks"]["kernel"]
    assert cb.centroids.shape == (3, 1, 1, 32)
    data = coding.encode(tree, entropy=entropy)
    _, manifest, _ = split(data)
    leaf = manifest["leaves"][0]
    assert isinstance(leaf["values"], list) and len(leaf["values"]) == 3
    np.testing.assert_array_equal(coding.decode(data)["blocks"]["kernel"],
                                  quant.dequantize(tree)["blocks"]["kernel"])
    back = coding.decode(data, dequantize=False)["blocks"]["kernel"]
    np.testing.assert_array_equal(back.indices, cb.indices)
    assert coding.encode({"blocks": {"kernel": back}}, entropy=entropy) == data
    # reference: the slices as separate leaves, each with its own streams
    separate = {f"l{i}": quant.Codebook(
        cb.indices[i], cb.centroids[i, 0, 0], None if cb.mask is None else cb.mask[i], bits=5)
        for i in range(3)}  # fmt: skip
    assert len(data) <= len(coding.encode(separate, entropy=entropy)) + 64
    monkeypatch.setattr(_leaves, "MIN_PIECE", 1 << 40)  # one stream per leaf, as before
    single = coding.encode(tree, entropy=entropy)
    assert isinstance(split(single)[1]["leaves"][0]["values"], dict)
    assert len(data) < 0.97 * len(single)
    rows = coding.report(data).rows
    assert sum(r.kept for r in rows) == (cb.mask.sum() if pruned else cb.indices.size)


def test_a_single_stream_is_kept_where_slices_look_alike():
    rng = np.random.default_rng(1)
    params = {"k": jnp.asarray(rng.standard_normal((3, 160, 160)).astype(np.float32))}
    data = coding.encode(quant.kmeans(params, 5, stacked=0))
    assert isinstance(split(data)[1]["leaves"][0]["values"], dict)


def _pieces_file():
    params = _stack(np.random.default_rng(0))
    return coding.encode(quant.kmeans(params, 5, stacked=0))


@pytest.mark.parametrize("change", [
    lambda v: v[:1],  # a list of one run
    lambda v: [],
    lambda v: [*v, 7],
    lambda v: [v[0], {**v[1], "alphabet": v[1]["alphabet"] - 1}, v[2]],  # alphabets differ
    lambda v: [v[0], v[0], v[2]],  # a run used twice: the stream is not tiled
    lambda v: [v[1], v[0], v[2]],  # pieces out of order still tile, but not the leaf: counts ok
    lambda v: v * 30_000,  # too many pieces
])
def test_hostile_piece_lists_are_refused_or_read_consistently(change):
    data = _pieces_file()
    head, manifest, body = split(data)
    m = copy.deepcopy(manifest)
    m["leaves"][0]["values"] = change(m["leaves"][0]["values"])
    bad = join(head, m, body)
    try:
        out = coding.decode(bad)
    except FormatError:
        with pytest.raises(FormatError):
            coding.report(bad)
    else:  # reordered pieces are a valid (different) file: decoded like report reads it
        assert out["blocks"]["kernel"].shape == (3, 160, 160)
        assert coding.report(bad).rows[0].weights == 3 * 160 * 160


def test_piece_lists_need_version_2():
    head, manifest, body = split(_pieces_file())
    m = copy.deepcopy(manifest)
    streams = m.pop("streams")  # version 1: runs are inline streams
    m["leaves"][0]["values"] = [dict(streams[r["stream"]]) for r in m["leaves"][0]["values"]]
    with pytest.raises(FormatError, match="version 2"):
        coding.decode(join((head[0], 1, 0), m, body, compress=False))
