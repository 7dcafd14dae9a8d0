"""The Python examples of the docs run as written.

Each page's ``python`` blocks run in order, as one program, in a fresh
process (later blocks build on earlier ones, as a reader would type them), in
a fresh directory where ``experiments/`` is the repository's.
``docs/memory.md`` runs on 8 simulated CPU devices, for its mesh of
``data=2, fsdp=4``.
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


def run(page: str, where: pathlib.Path) -> None:
    # In a fresh directory (the examples write files such as model.jrm) that sees the
    # repository's committed results at the paths the docs name.
    (where / "experiments").symlink_to(ROOT / "experiments")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", program(page)], cwd=where, capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, f"{page}:\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("page", FAST)
def test_page_examples_run(page, tmp_path):
    run(page, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("page", SLOW)
def test_long_page_examples_run(page, tmp_path):
    run(page, tmp_path)


def test_every_page_with_examples_is_checked():
    pages = {str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *ROOT.glob("docs/*.md")]
             if BLOCK.search(p.read_text())}
    assert pages == set(FAST) | set(SLOW)
