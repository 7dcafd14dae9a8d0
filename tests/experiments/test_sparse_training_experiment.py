"""The sparse-training reproduction end to end on tiny synthetic MNIST-shaped data and text."""

import json
import math
import shutil

import jax
import numpy as np
import pytest

from experiments import sparse_report, sparse_tasks, sparse_training
from jaxrm import prune
from jaxrm import tree as jtree
from tests.experiments.test_pipeline import _write_idx_dir, synthetic


@pytest.fixture(scope="module")
def mnist_out(tmp_path_factory):
    """The tiny config's LeNet-300-100 block, run once for the tests below."""
    root = tmp_path_factory.mktemp("sparse")
    x, y, xt, yt = synthetic()
    _write_idx_dir(root / "mnist", x, y, xt, yt)
    out = root / "out"
    res = sparse_training.main(["--config", "tiny", "--models", "lenet-300-100", "--out",
                                str(out), "--quiet", "--data-dir", str(root / "mnist")])
    return out, res


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = [b"and", b"the", b"lord", b"said", b"unto", b"him", b"light", b"was"]
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_bytes(b"\n".join(b" ".join(rng.choice(words, 8)) for _ in range(400)) + b"\n")
    return path


def test_tiny_config_writes_results_table_and_plot(mnist_out):
    out, res = mnist_out
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(res["summary"]))
    assert not saved["complete"]  # the tiny config's LM has not run into this directory
    by = {(r["method"], r["sparsity"]): r for r in saved["runs"]}
    assert set(by) == {("dense", 0.0), ("static", 0.9), ("rigl", 0.9)}
    assert by[("dense", 0.0)]["density"] == 1.0
    for m in ("static", "rigl"):  # ERK over the kernels keeps 10% of them
        assert 0.05 < by[(m, 0.9)]["density"] <= 0.1 + 1e-3  # grown weights may still be 0
        assert 0.0 <= by[(m, 0.9)]["error"] <= 1.0
    rec = saved["models"]["lenet-300-100"]
    assert rec["finished"] and rec["n_runs"] == 3 and len(rec["load_start"]) == 3
    assert rec["command"].endswith("--data-dir " + str(out.parent / "mnist"))
    table = (out / "table.md").read_text()
    assert "| rigl |" in table and "--config tiny --models lenet-300-100" in table
    assert (out / "accuracy_vs_sparsity.png").stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_vs_sparsity.png",
                                                     "results.json", "table.md"]


def test_models_merges_the_lm_rows_and_replaces_stale_ones(mnist_out, corpus, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(mnist_out[0], out)
    before = json.loads((out / "results.json").read_text())
    # A stale LM row from an earlier run (another seed): rerunning the LM replaces it.
    stale = {**before["runs"][0], "model": "lm", "seed": 7, "ppl": 1e9}
    before["runs"].append(stale)
    (out / "results.json").write_text(json.dumps(before))
    res = sparse_training.main(["--config", "tiny", "--models", "lm", "--out", str(out),
                                "--quiet", "--corpus", str(corpus), "--no-plots"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["complete"] and res["complete"]
    lenet = [r for r in saved["runs"] if r["model"] == "lenet-300-100"]
    assert lenet == [r for r in before["runs"] if r["model"] == "lenet-300-100"]
    lm = {(r["method"], r["seed"]): r for r in saved["runs"] if r["model"] == "lm"}
    assert set(lm) == {("dense", 0), ("static", 0), ("rigl", 0)}
    for r in lm.values():
        assert 1.0 < r["ppl"] < 2 * 17  # uniform over the corpus's 17 bytes: 17
        assert r["bits_per_byte"] == pytest.approx(math.log2(r["ppl"]))
    assert lm[("dense", 0)]["density"] == 1.0
    assert abs(lm[("rigl", 0)]["density"] - 0.1) < 2e-3  # of the blocks' matmuls only
    assert list(saved["models"]) == ["lenet-300-100", "lm"]
    assert saved["models"]["lenet-300-100"] == before["models"]["lenet-300-100"]
    table = (out / "table.md").read_text()
    assert "## lm (12 steps of batch 4, 1 seeds): held-out perplexity" in table
    assert "Incomplete" not in table


def test_bad_models_and_another_config_are_refused(mnist_out, tmp_path):
    with pytest.raises(ValueError, match="--models"):
        sparse_training.main(["--config", "tiny", "--models", "lenet-5", "--out",
                              str(tmp_path), "--quiet"])
    out = tmp_path / "full"
    shutil.copytree(mnist_out[0], out)
    with pytest.raises(ValueError, match="config 'tiny'"):
        sparse_training.main(["--config", "full", "--models", "lenet-5", "--out", str(out),
                              "--quiet"])


def test_atomic_write_leaves_the_old_file_on_error(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        sparse_report.atomic_write(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.fixture(scope="module")
def lm_task(corpus):
    run = next(r for r in sparse_training.CONFIGS["tiny"]["runs"] if r.model == "lm")
    task = sparse_tasks.make(run, corpus=corpus)
    return run, task, task.init(jax.random.key(0))


def test_lm_erk_reads_each_slice_as_its_fan_in_by_fan_out_matrix(lm_task):
    run, task, params = lm_task
    targets = dict(jtree.leaves_with_paths(task.targets(params, 0.9), keep_none=True))
    d, h = run.lm.d_model, 4 * run.lm.d_model
    fans = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "up": (d, h), "down": (h, d)}
    # ERK by hand: density eps * (fan_in + fan_out) / (fan_in * fan_out), eps from the budget
    # (no layer is dense at 90%).
    n = {k: run.lm.layers * a * b for k, (a, b) in fans.items()}
    raw = {k: (a + b) / (a * b) for k, (a, b) in fans.items()}
    eps = 0.1 * sum(n.values()) / sum(raw[k] * n[k] for k in fans)
    for k in fans:
        assert targets[f"blocks/{k}/kernel"] == pytest.approx(1 - eps * raw[k])
    assert {p for p, s in targets.items() if s is not None} == {f"blocks/{k}/kernel"
                                                                for k in fans}


def test_lm_rigl_masks_are_exact_per_scanned_slice(lm_task):
    run, task, params = lm_task
    targets = dict(jtree.leaves_with_paths(task.targets(params, 0.9)))
    tx = sparse_training._transform("rigl", 0.9, run, task.targets(params, 0.9),
                                    jax.random.key(1), task)
    masks = dict(jtree.leaves_with_paths(prune.masks_of(tx.init(params)), keep_none=True))
    for path in ("embed/embedding", "head/kernel", "pos", "blocks/ln1/scale"):
        assert masks[path] is None  # embeddings, head and norms stay dense
    for path, s in targets.items():
        if s is None:
            continue
        m = np.asarray(masks[path])
        per_slice = m.reshape(m.shape[0], -1)
        assert (per_slice.sum(1) == round((1 - s) * per_slice.shape[1])).all(), path
