"""The GPU check script's dry run: every code path of ``benchmarks/memory_gpu_check.py``
at tiny sizes on the CPU, so the script a GPU machine runs has not rotted."""

import json
import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "memory_gpu_check.py"


def test_dry_run_passes_every_check_it_can_make_on_cpu():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert report["failures"] == []
    ran = [r for r in report["results"] if r["ok"] is not None]
    skipped = [r["check"] for r in report["results"] if r["ok"] is None]
    # What only a device can show is skipped (its own memory, offloaded bytes), the rest runs:
    # the 8-bit state, the OOM guard on a simulated budget, fit_batch and the offload gradients.
    assert len(ran) >= 9 and all(r["ok"] for r in ran), report["results"]
    assert all("dry run" in r["detail"] for r in report["results"] if r["ok"] is None), skipped
    names = " ".join(r["check"] for r in ran)
    for needed in ("8-bit state bytes", "oom_guard recovers", "fit_batch", "offload_dots gradient"):
        assert needed in names, names
