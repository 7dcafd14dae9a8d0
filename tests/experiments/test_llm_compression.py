"""The LLM compression pipeline end to end on a small synthetic corpus (a few steps)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import kjv, llm_compression


def test_splits_hold_out_the_last_verses():
    data = b"".join(f"verse {i} and so on\n".encode() for i in range(100))
    train, test, vocab = kjv.splits(data)
    assert len(train) + len(test) == len(data)
    assert bytes(np.asarray(vocab, np.uint8)[test[:9]]) == b"verse 90 "


@pytest.mark.slow
def test_pipeline_measures_each_method_from_its_file(tmp_path):
    rng = np.random.default_rng(0)
    words = [b"and", b"the", b"lord", b"said", b"unto", b"him", b"light", b"was"]
    lines = [b" ".join(rng.choice(words, 8)) for _ in range(3000)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    methods = ["float", "GPTQ 4-bit", "RTN 4-bit", "Wanda 2:4", "SparseGPT 2:4 + 4-bit",
               "AWQ 4-bit g32"]
    llm_compression.main(
        [
            "--config",
            "tiny",
            "--corpus",
            str(corpus),
            "--steps",
            "30",
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
            "--only",
            *methods,
        ]
    )
    res = json.loads((out / "results.json").read_text())
    by = {r["method"]: r for r in res["rows"]}
    assert set(by) == {*methods, "budget = GPTQ 4-bit file"}
    assert by["GPTQ 4-bit"]["bytes"] < 0.5 * by["float"]["bytes"]
    assert by["budget = GPTQ 4-bit file"]["bytes"] <= by["GPTQ 4-bit"]["bytes"]
    # AWQ's file holds its input scales too, and the model runs from it.
    assert by["AWQ 4-bit g32"]["bytes"] < 0.5 * by["float"]["bytes"]
    assert by["AWQ 4-bit g32"]["ppl"] < 2 * by["float"]["ppl"]
    assert all(np.isfinite(r["ppl"]) and r["ppl"] > 1 for r in res["rows"])
    assert (out / "table.md").exists() and (out / "ppl_vs_size.png").exists()
