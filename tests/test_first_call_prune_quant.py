"""A one-off call in a fresh process costs about its steady state (no per-shape compiles).

Each case runs in its own Python process through the benchmark harness; the
ratio first call / steady state is asserted with a generous margin (the
target is 2x; figures in docs/benchmarks.md).
"""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

from _harness import RESNET18_SETUP, fresh_process

CASES = {
    "uniform": "from jaxrm import quant\ncall = lambda: quant.uniform(tree, 8, axis=-1)",
    "nm": "from jaxrm import prune\ndel tree['layer0']\n"
          "call = lambda: prune.masks(prune.magnitude(tree), 0.5, pattern=prune.nm(2, 4))",
    "unstructured": "from jaxrm import prune\n"
                    "call = lambda: prune.masks(prune.magnitude(tree), 0.9)",
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_first_call_in_a_fresh_process_costs_about_the_steady_state(case):
    first, steady = fresh_process(RESNET18_SETUP + CASES[case], repeats=3)
    assert first <= 4 * steady, (case, first, steady)
