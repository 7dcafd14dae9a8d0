"""Sharding: single-device argument checks here, 8-device checks in a subprocess."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrm import memory

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EIGHT_DEVICE_CHECKS = [
    "mesh_shapes",
    "fsdp_specs_and_bytes",
    "fsdp_over_all_devices_state_bytes",
    "masks_and_codebooks_shard",
    "rules_specs_and_errors",
    "dp_fsdp_step_equals_one_device",
    "accumulate_under_sharding",
]


def run_script(name, *args, timeout=300):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, os.path.join(HERE, name), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )


def test_sharding_on_eight_simulated_devices():
    # one subprocess for all checks (also under pytest-xdist): JAX startup dominates
    proc = run_script("_eight_devices.py")
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            results[r["check"]] = r
    assert proc.returncode == 0, proc.stderr[-4000:]
    missing = [c for c in EIGHT_DEVICE_CHECKS if c not in results]
    assert not missing, f"checks that did not run: {missing}\n{proc.stderr[-4000:]}"
    failed = {c: r["error"] for c, r in results.items() if not r["ok"]}
    assert not failed, "\n".join(f"--- {c}\n{e}" for c, e in failed.items())


def test_mesh_rejects_sizes_that_do_not_match_the_devices():
    n = jax.device_count()
    with pytest.raises(ValueError, match="multiply to"):
        memory.mesh(data=n + 1)
    with pytest.raises(ValueError, match="positive integer"):
        memory.mesh(data=0)
    with pytest.raises(ValueError, match="at least one axis"):
        memory.mesh()
    with pytest.raises(TypeError, match="must be an int"):
        memory.mesh(data=1.0)
    with pytest.raises(TypeError, match="min_bytes"):
        memory.fsdp({"w": jnp.zeros((4, 4))}, memory.mesh(fsdp=-1), min_bytes=1.5)
    assert dict(memory.mesh(data=-1).shape) == {"data": n}


def test_rules_reject_bad_patterns_and_specs():
    with pytest.raises(ValueError, match=r"rules\[1\].*regular expression"):
        memory.rules([("kernel", P()), ("(", P())])
    with pytest.raises(TypeError, match=r"rules\[0\].*PartitionSpec"):
        memory.rules([("kernel", "data")])
    with pytest.raises(TypeError, match=r"rules\[0\]"):
        memory.rules([("kernel", P(3))])
    with pytest.raises(TypeError, match=r"rules\[0\].*pair"):
        memory.rules(["kernel"])


def test_rules_first_match_wins_and_unmatched_replicate():
    tree = {"a": {"kernel": jnp.zeros((4, 2))}, "b": {"kernel": jnp.zeros((2, 2)),
                                                     "bias": jnp.zeros(2)}}
    r = memory.rules([(r"^a/", P("x")), (r"kernel", P(None, "y"))])
    specs = r.specs(tree)
    assert specs == {"a": {"kernel": P("x")}, "b": {"kernel": P(None, "y"), "bias": P()}}


def test_fsdp_and_shard_on_one_device():
    m = memory.mesh(fsdp=1)
    tree = {"w": np.ones((8, 4), np.float32)}
    with pytest.raises(ValueError, match="axis"):
        memory.fsdp(tree, m, axis="data")
    with pytest.raises(TypeError, match="mesh"):
        memory.fsdp(tree, "mesh")
    placed = memory.shard(tree, memory.fsdp(tree, m))
    assert memory.per_device_bytes(placed) == {jax.devices()[0]: 8 * 4 * 4}
    with pytest.raises(ValueError, match="leaves"):
        memory.shard(tree, {"w": NamedSharding(m, P()), "v": NamedSharding(m, P())})
    with pytest.raises(TypeError, match="'w'"):
        memory.per_device_bytes(tree)  # numpy arrays are on no device
