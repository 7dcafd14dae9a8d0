"""A tiny end-to-end run of the pipeline (few steps) on small synthetic data."""

import dataclasses
import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import configs, deep_compression, models, pipeline, train
from jaxrm import coding

TINY = dict(dense_epochs=1, prune_rounds=2, prune_epochs=1, prune_final_epochs=1,
            quant_epochs=1, batch=128, quant_batch=256)


def synthetic(n=640, m=300, seed=0):
    """Images whose label is the brightest of 10 horizontal bands (learnable)."""
    rng = np.random.default_rng(seed)

    def make(k):
        x = rng.integers(0, 60, (k, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, k).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 2 * c + 4: 2 * c + 6] = 255
        return x, y

    (x, y), (xt, yt) = make(n), make(m)
    return x, y, xt, yt


@pytest.fixture(scope="module")
def tiny_data():
    x, y, xt, yt = synthetic()
    return train.Data(jnp.asarray(x), jnp.asarray(y.astype(np.int32)), jnp.asarray(xt),
                      jnp.asarray(yt.astype(np.int32)))


def _write_idx_dir(path, x, y, xt, yt):
    import struct

    path.mkdir()

    def idx(a):
        head = struct.pack(">HBB", 0, 8, a.ndim) + struct.pack(">" + "I" * a.ndim, *a.shape)
        return head + a.tobytes()

    for stem, a in [("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y),
                    ("t10k-images-idx3-ubyte", xt), ("t10k-labels-idx1-ubyte", yt)]:
        (path / f"{stem}.gz").write_bytes(gzip.compress(idx(a)))


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One tiny run of the CLI (paper config, few steps) on crafted IDX files."""
    tmp = tmp_path_factory.mktemp("cli")
    x, y, xt, yt = synthetic()
    _write_idx_dir(tmp / "mnist", x, y, xt, yt)
    out = tmp / "out"
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    res = deep_compression.main(["--out", str(out), "--data-dir", str(tmp / "mnist"),
                                 "--quiet", *sets])
    data = train.Data(jnp.asarray(x), jnp.asarray(y.astype(np.int32)), jnp.asarray(xt),
                      jnp.asarray(yt.astype(np.int32)))
    return res, out, data


def test_tiny_run_gives_a_decodable_file(cli_run):
    res, out, data = cli_run
    r = res["runs"][0]
    cfg = configs.get_config("lenet-300-100", "paper", **TINY)
    path = out / "model.jrm"
    decoded = coding.load(path)  # the file alone gives every parameter
    like = models.init_params("lenet-300-100", jax.random.key(0))
    assert jax.tree.structure(decoded) == jax.tree.structure(like)
    for a, b in zip(jax.tree.leaves(decoded), jax.tree.leaves(like)):
        assert a.shape == b.shape and a.dtype == b.dtype
    # Densities are the paper's per layer; at most 2**6 shared values per kernel.
    for name, density in cfg.densities:
        layer, leaf = name.split("/")
        w = np.asarray(decoded[layer][leaf])
        assert np.count_nonzero(w) <= round(density * w.size)
        assert np.count_nonzero(w) >= round(density * w.size) - 2  # a centroid may be 0
        assert len(np.unique(w[w != 0])) <= 2**6
    # The reported error and size are those of the file.
    apply = models.apply_fn("lenet-300-100")
    assert r["error"] == train.error_rate(apply, decoded, data)
    assert r["bytes"] == path.stat().st_size
    assert r["ratio"] == pytest.approx(4 * 266_610 / path.stat().st_size)
    assert r["coding"]["decoded_equals_dequantized"]
    assert r["error"] < 0.5  # it learned something from one epoch
    assert r["prune"]["density"]["ip1/kernel"] == pytest.approx(0.08, abs=1e-5)


def test_cli_writes_results_table_and_plots(cli_run):
    res, out, _ = cli_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"]["error"]["mean"] == res["runs"][0]["error"]
    assert saved["config"]["dense_epochs"] == 1
    for stage in ("dense", "prune", "quant", "coding"):
        assert saved["runs"][0][stage]["seconds"] > 0
    table = (out / "table.md").read_text()
    assert "| paper | 1.64% | 1.58% | 1070 KB | 27 KB | 40x |" in table
    assert f"{res['runs'][0]['ratio']:.1f}x" in table
    for png in ("weights.png", "layers.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_set_rejects_unknown_fields():
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        deep_compression.main(["--set", "nonsense=1"])


def _run(tmp, data, cfg, **kw):
    try:
        return pipeline.run_seed(cfg, 3, data, tmp, quiet=True, **kw)
    except pipeline.Interrupted:
        return None


@pytest.mark.slow
@pytest.mark.parametrize("config", ["paper", "best"])
def test_resume_ends_with_the_same_result(tmp_path, tiny_data, config):
    cfg = configs.get_config("lenet-300-100", config, **TINY)
    if config == "best":
        cfg = dataclasses.replace(cfg, prune_epochs=2)
    ref = pipeline.run_seed(cfg, 3, tiny_data, tmp_path / "ref", quiet=True)
    ref_bytes = (tmp_path / "ref" / "model.jrm").read_bytes()
    epochs = 1 + cfg.prune_rounds * cfg.prune_epochs + cfg.prune_final_epochs + 1
    if config == "best":
        epochs = 1 + cfg.prune_epochs + cfg.prune_final_epochs + 1
    # Interrupt at the end of the dense stage, inside pruning, and inside quantization.
    for stop in sorted({1, 3, epochs - 1}):
        d = tmp_path / f"stop{stop}"
        assert _run(d, tiny_data, cfg, stop_after=stop) is None
        got = pipeline.run_seed(cfg, 3, tiny_data, d, resume=True, quiet=True)
        assert (d / "model.jrm").read_bytes() == ref_bytes
        assert got["error"] == ref["error"]
        assert got["prune"]["density"] == ref["prune"]["density"]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["paper", "best"])
def test_tiny_lenet5_run(tmp_path, tiny_data, config):
    cfg = configs.get_config("lenet-5", config, **TINY)
    r = pipeline.run_seed(cfg, 0, tiny_data, tmp_path, quiet=True)
    decoded = coding.load(tmp_path / "model.jrm")
    assert decoded["conv1"]["kernel"].shape == (5, 5, 1, 20)
    assert r["error"] == train.error_rate(models.apply_fn("lenet-5"), decoded, tiny_data)
    assert r["ratio"] > 10
