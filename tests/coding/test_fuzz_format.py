"""Crafted files with valid CRC32s: refused fast, in bounded memory, by decode and report."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jrm_cases import base_files, cases
from jrm_craft import join, split
from jrm_time import run_fast

from jaxrm import coding

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def test_the_base_files_of_the_model_are_valid():
    # the cases are single changes of these, so they must decode as the docs say
    out = {k: coding.decode(v) for k, v in base_files().items()}
    np.testing.assert_array_equal(out["codebook-fixed"]["cb"]["kernel"],
                                  [[-1.0, -0.5, 0.5], [1.0, -1.0, -1.0]])
    np.testing.assert_array_equal(out["codebook-huffman"]["cb"]["kernel"],
                                  out["codebook-fixed"]["cb"]["kernel"])
    np.testing.assert_array_equal(out["codebook-ans"]["cb"]["kernel"], np.full((2, 3), 0.5))
    sp = np.zeros(12, np.float32)
    sp[0], sp[9] = 0.25, 1.0
    np.testing.assert_array_equal(out["codebook-sparse"]["sp"], sp)
    np.testing.assert_array_equal(out["qarray"]["q"], [[-1.0, -0.5, 0.0], [0.25, 0.25, 0.0]])
    w = np.zeros(10, np.float32)
    w[1], w[5] = 1.5, -2.0
    np.testing.assert_array_equal(out["sparse"]["w"], w)
    np.testing.assert_array_equal(out["shared"]["c2"], [1.0, -1.0, 1.0])


def test_every_crafted_case_is_refused_fast_with_bounded_memory():
    """All cases in a subprocess whose address space is capped at its size + 1 GiB."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "jrm_fuzz_worker.py"), "--headroom", "1024"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 2 * sum(1 for _ in cases())
    bad = [r for r in rows if r["outcome"] != "refused"]
    assert not bad, bad[:5]
    # the worker times each case against its yardstick bound (about 1 s on a quiet core)
    slow = [r for r in rows if r["seconds"] > r["bound"]]
    assert not slow, slow[:5]
    # traced numpy/Python allocations: a few MB at most for files of a few KB
    heavy = [r for r in rows if r["peak"] > 16 * 2**20]
    assert not heavy, heavy[:5]
    per_category = collections.Counter(r["category"] for r in rows if r["api"] == "decode")
    assert set(per_category) == {"header", "sections", "streams", "runs", "leaf", "sparse",
                                 "codebook", "qarray", "huffman", "ans"}


# ------------------------------------------------------------- hypothesis


HOSTILE = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**62, 2**64, True, False, None, 1.5, "", "x",
                     [], {}, [2**40], "float32", "object", "V8", "huffman", "ans", "raw"]),
    st.lists(st.integers(-3, 2**33), max_size=4),
)


def _paths(node, prefix=()):
    """Every (container, key) in a JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield node, k
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield node, i
            yield from _paths(v, (*prefix, i))


def _mutated(data, picks, values):
    head, manifest, body = split(data)
    slots = list(_paths(manifest))
    for pick, value in zip(picks, values):
        node, key = slots[pick % len(slots)]
        node[key] = value
        slots = list(_paths(manifest))
    return join(head, manifest, body)


@pytest.mark.slow
@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from(sorted(base_files())),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=3),
    st.lists(HOSTILE, min_size=3, max_size=3),
)
def test_hypothesis_mutations_of_every_field(name, picks, values):
    data = _mutated(base_files()[name], picks, values)
    try:
        out = run_fast(lambda: coding.decode(data), 300)  # about 1 s on a quiet core
    except coding.FormatError:
        with pytest.raises(coding.FormatError):
            coding.report(data)  # refused by both, or by neither
    else:
        rows = {r.path: r for r in coding.report(data).rows}
        flat = _leaves(out)
        assert set(rows) == set(flat)
        for path, arr in flat.items():
            assert rows[path].weights == np.size(arr)


def _leaves(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        out.update(_leaves(v, f"{prefix}/{k}" if prefix else k))
    return out
