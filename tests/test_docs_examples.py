"""The Python examples of the docs run as written.

Each page's ``python`` blocks run in order, as one program, in a fresh
process from the repository root (later blocks build on earlier ones, as a
reader would type them). ``docs/memory.md`` runs on 8 simulated CPU devices,
for its mesh of ``data=2, fsdp=4``.
"""

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
FAST = ["README.md", "docs/coding.md", "docs/concepts.md", "docs/deep-compression.md",
        "docs/distillation.md", "docs/layouts.md"]
# 10-35 s each on 2 cores: in `make test-all`
SLOW = ["docs/execution.md", "docs/memory.md", "docs/oneshot.md", "docs/pruning.md",
        "docs/quantization.md", "docs/sparse_training.md", "docs/structural.md"]
DEVICES = {"docs/memory.md": 8}


def program(page: str) -> str:
    blocks = BLOCK.findall((ROOT / page).read_text())
    assert blocks, f"{page} has no python example"
    head = ""
    if page in DEVICES:
        head = f"import jax\njax.config.update('jax_num_cpu_devices', {DEVICES[page]})\n"
    return head + "\n\n".join(textwrap.dedent(b) for b in blocks)


def run(page: str) -> None:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", program(page)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, f"{page}:\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("page", FAST)
def test_page_examples_run(page):
    run(page)


@pytest.mark.slow
@pytest.mark.parametrize("page", SLOW)
def test_long_page_examples_run(page):
    run(page)


def test_every_page_with_examples_is_checked():
    pages = {str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *ROOT.glob("docs/*.md")]
             if BLOCK.search(p.read_text())}
    assert pages == set(FAST) | set(SLOW)
