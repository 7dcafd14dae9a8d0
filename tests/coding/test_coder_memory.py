"""Peak memory of the entropy coders, measured in a fresh process (slow)."""

import json
import subprocess
import sys

import pytest

CHILD = r"""
import json, sys
import numpy as np
from jaxrm.coding import _ans, _huffman

def rss():
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024

def extra(fn):
    with open("/proc/self/clear_refs", "w") as f:  # resets the peak to the current RSS
        f.write("5")
    before, _ = rss()
    out = fn()
    return rss()[1] - before, out

coder = {"ans": _ans, "huffman": _huffman}[sys.argv[1]]
n = int(sys.argv[2])
rng = np.random.default_rng(0)
sym = np.clip(np.round(rng.normal(16, 4, n)), 0, 31).astype(np.uint8)
enc, data = extra(lambda: coder.encode(sym, 32, 5))
dec, out = extra(lambda: coder.decode(data, n, 32, 5))
assert np.array_equal(out, sym)
print(json.dumps({"encode": enc / n, "decode": dec / n}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("codec", ["huffman", "ans"])
def test_at_most_16_bytes_a_symbol_at_peak(codec):
    n = 20_000_000
    res = subprocess.run(
        [sys.executable, "-c", CHILD, codec, str(n)],
        capture_output=True, text=True, check=True, timeout=600,
    )
    per_symbol = json.loads(res.stdout.strip().splitlines()[-1])
    # the decoded uint32 symbols alone are 4 bytes a symbol
    assert per_symbol["encode"] <= 16, per_symbol
    assert per_symbol["decode"] <= 16, per_symbol
