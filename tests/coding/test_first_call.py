"""A one-off encode + decode in a fresh process: nothing compiled, close to the steady state."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from jaxrm import coding
from jaxrm.quant import Codebook, QArray

rng = np.random.default_rng(0)
w = rng.normal(size=(1000, 1000)).astype(np.float32)
cent = np.quantile(w, np.linspace(0, 1, 32)).astype(np.float32)
idx = np.abs(w.reshape(-1, 1) - cent).argmin(1).astype(np.uint8).reshape(w.shape)
q = rng.integers(-8, 8, (3, 64, 48)).astype(np.int8)
tree = {
    "w": Codebook(jnp.asarray(idx), jnp.asarray(cent), bits=5),
    # a stacked leaf with one codebook per slice, pruned, and a per-channel QArray
    "s": Codebook(jnp.asarray(idx[:96].reshape(3, 32, 1000)),
                  jnp.asarray(np.tile(cent, (3, 1, 1, 1))),
                  jnp.asarray(rng.random((3, 32, 1000)) < 0.3), bits=5),
    "q": QArray(jnp.asarray(q), jnp.full((3, 1, 48), 0.1, jnp.float32),
                jnp.zeros((3, 1, 48), jnp.float32), bits=4, axis=-1),
}
jax.block_until_ready(tree)
compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: compiles.append(event) if "compile" in event else None)

def once():
    start = time.perf_counter()
    jax.block_until_ready(coding.decode(coding.encode(tree, entropy=sys.argv[1])))
    return time.perf_counter() - start

first = once()
steady = min(once() for _ in range(5))
print(json.dumps({"first": first, "steady": steady, "compiles": len(compiles)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("entropy", ["huffman", "ans"])
def test_a_one_off_call_costs_about_its_steady_state(entropy):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    best = None
    for _ in range(3):  # a fresh process each time; a load spike does not repeat thrice
        proc = subprocess.run([sys.executable, "-c", CHILD, entropy], capture_output=True,
                              text=True, timeout=300, env=env, check=True)
        r = json.loads(proc.stdout.splitlines()[-1])
        assert r["compiles"] == 0  # numpy all the way: no compile on any path
        ratio = r["first"] / r["steady"]
        best = ratio if best is None else min(best, ratio)
        if best < 4.0:
            break
    # the goal is 2x (measured 1.1-1.9x under load 6-8); 4x leaves room for the load
    assert best < 4.0, best
