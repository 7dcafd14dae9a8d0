"""The scripts of ``examples/`` run end to end at tiny sizes (a few steps, one seed).

They read scikit-learn's digits (the ``examples`` extra), so they are skipped without it.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    pytest.importorskip("sklearn")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_shrink_digits_removes_channels_and_still_classifies():
    out = run("shrink_digits.py", "--steps", "40", "--finetune", "10", "--begin", "5",
              "--end", "30", "--every", "5", "--seeds", "1")
    before, after = map(int, re.search(r"parameters (\d+) -> (\d+)", out).groups())
    assert after < before / 2  # half the channels of every group gone, the dense layer's rows too
    accuracy = float(re.search(r"pruned, shrunk, fine-tuned\s+([\d.]+)", out).group(1))
    assert accuracy > 0.5  # ten classes: chance is 0.1


@pytest.mark.slow
def test_distill_digits_trains_both_students():
    out = run("distill_digits.py", "--seeds", "1", "--teacher-steps", "300", "--steps", "300")
    teacher = float(re.search(r"teacher .*test accuracy ([\d.]+)", out).group(1))
    found = re.search(r"labels only ([\d.]+) .*distilled \(T=1.0, alpha=0.9\) ([\d.]+)", out)
    assert found, out
    labels_only, distilled = map(float, found.groups())
    # 125 labelled images, 300 steps: every model is far above chance (0.1); the student
    # that also learns from the teacher's logits on 1132 unlabelled images is not worse
    # than the one that sees the labels alone, by more than a few test images.
    assert teacher > 0.6 and labels_only > 0.6, out
    assert distilled > labels_only - 0.02, out
