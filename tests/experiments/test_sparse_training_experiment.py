"""The sparse-training reproduction end to end on tiny synthetic MNIST-shaped data."""

import json

from experiments import sparse_training
from tests.experiments.test_pipeline import _write_idx_dir, synthetic


def test_tiny_config_writes_results_table_and_plot(tmp_path):
    x, y, xt, yt = synthetic()
    _write_idx_dir(tmp_path / "mnist", x, y, xt, yt)
    out = tmp_path / "out"
    res = sparse_training.main(["--config", "tiny", "--out", str(out), "--quiet",
                                "--data-dir", str(tmp_path / "mnist")])
    saved = json.loads((out / "results.json").read_text())
    assert saved["complete"] and saved["summary"] == json.loads(json.dumps(res["summary"]))
    by = {(r["method"], r["sparsity"]): r for r in saved["runs"]}
    assert set(by) == {("dense", 0.0), ("static", 0.9), ("rigl", 0.9)}
    assert by[("dense", 0.0)]["density"] == 1.0
    for m in ("static", "rigl"):  # ERK over the kernels keeps 10% of them
        assert 0.05 < by[(m, 0.9)]["density"] <= 0.1 + 1e-3  # grown weights may still be 0
        assert 0.0 <= by[(m, 0.9)]["error"] <= 1.0
    table = (out / "table.md").read_text()
    assert "| rigl |" in table and "python -m experiments.sparse_training --config tiny" in table
    assert (out / "accuracy_vs_sparsity.png").stat().st_size > 1000
