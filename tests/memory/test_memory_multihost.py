"""Two processes on localhost run one sharded training step with jax.distributed."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from _memory_mlp import OPT, init_mlp, make_batch, train_step  # noqa: E402


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_sharded_step_equals_one_device():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    port = str(free_port())
    worker = os.path.join(HERE, "_multihost_worker.py")
    procs = [
        subprocess.Popen([sys.executable, worker, str(i), port], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err[-4000:]
            outs.append(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()

    # the same computation on this process's single device
    sizes = [16, 64, 64, 8]
    params, batch = init_mlp(0, sizes), make_batch(1, 32, sizes[0], sizes[-1])
    state = OPT.init(params)
    step = jax.jit(train_step)
    losses = []
    for _ in range(2):
        params, state, loss = step(params, state, batch)
        losses.append(float(loss))
    sums = [float(np.asarray(x, np.float64).sum()) for x in jax.tree.leaves(params)]
    for out in outs:
        np.testing.assert_allclose(out["losses"], losses, rtol=1e-5)
        np.testing.assert_allclose(out["sums"], sums, rtol=1e-4, atol=1e-5)
    # each process holds half of every sharded leaf: its 2 devices hold a quarter each
    assert outs[0]["local_bytes"] == outs[1]["local_bytes"]
