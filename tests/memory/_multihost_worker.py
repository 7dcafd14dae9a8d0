"""One process of the 2-process sharded training step (test_memory_multihost.py).

Usage: python _multihost_worker.py PROCESS_ID PORT
Each process has 2 CPU devices; the mesh spans the 4 devices of both
processes, so the step's collectives cross processes (gloo over loopback).
Prints one JSON line with the losses and the updated parameters' sums.
"""
# ruff: noqa: E402  (the runtime is configured before the other imports)

import json
import os
import sys

import jax

jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_cpu_collectives_implementation", "gloo")

process_id, port = int(sys.argv[1]), int(sys.argv[2])
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=2,
    process_id=process_id,
    initialization_timeout=60,
)

import numpy as np
from jax.experimental import multihost_utils

from jaxrm import memory

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _memory_mlp import OPT, init_mlp, make_batch, train_step

assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2

SIZES = [16, 64, 64, 8]
params = init_mlp(0, SIZES)
batch = make_batch(1, 32, SIZES[0], SIZES[-1])
m = memory.mesh(data=2, fsdp=2)
p_sh = memory.fsdp(params, m, min_bytes=1024)
s_sh = memory.fsdp(OPT.init(params), m, min_bytes=1024)
p = memory.shard(params, p_sh)
s = memory.shard(OPT.init(params), s_sh)
b = memory.shard(batch, memory.data_sharding(m))
assert not p["Dense_1"]["kernel"].is_fully_addressable
local = memory.per_device_bytes(p)
assert len(local) == 2  # this process's devices only

step = jax.jit(train_step, out_shardings=(p_sh, s_sh, None))
losses = []
for _ in range(2):
    p, s, loss = step(p, s, b)
    losses.append(float(loss))
full = multihost_utils.process_allgather(p, tiled=True)
sums = [float(np.asarray(x, np.float64).sum()) for x in jax.tree.leaves(full)]
print(json.dumps({"process": process_id, "losses": losses, "sums": sums,
                  "local_bytes": sorted(local.values())}), flush=True)
jax.distributed.shutdown()
