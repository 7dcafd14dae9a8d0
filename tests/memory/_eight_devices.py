# ruff: noqa: E402  (the device count is set before the other imports)
"""Sharding checks on 8 simulated CPU devices, run in a subprocess by test_memory_sharding.py.

The device count must be set before JAX starts its backends, which a pytest
process that already ran other tests cannot do, hence a separate process.
Each check prints one JSON line ``{"check": name, "ok": bool, "error": str}``.
"""

import json
import os
import sys
import time
import traceback

import jax

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrm import memory
from jaxrm.quant._types import Codebook

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _memory_mlp import OPT, init_mlp, make_batch, mlp_loss, train_step

CHECKS = {}


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


@check
def mesh_shapes():
    m = memory.mesh(data=2, fsdp=4)
    assert dict(m.shape) == {"data": 2, "fsdp": 4}, m.shape
    assert m.devices.size == 8
    assert dict(memory.mesh(data=-1, fsdp=4).shape) == {"data": 2, "fsdp": 4}
    for bad in ({"data": 3, "fsdp": 4}, {"data": 16}, {"a": -1, "b": -1}, {"data": 0}):
        try:
            memory.mesh(**bad)
        except ValueError as e:
            assert "mesh" in str(e), e
        else:
            raise AssertionError(f"mesh({bad}) did not raise")


@check
def fsdp_specs_and_bytes():
    m = memory.mesh(data=2, fsdp=4)
    tree = {
        "w": jnp.zeros((64, 256)),  # largest dim 256 divisible by 4 -> dim 1
        "v": jnp.zeros((128, 12)),  # dim 0 (128) is the largest divisible
        "odd": jnp.zeros((6, 1030)),  # 1030 and 6 not divisible by 4 -> replicated
        "b": jnp.zeros((256,)),  # below min_bytes -> replicated
        "s": jnp.zeros(()),
    }
    sh = memory.fsdp(tree, m, min_bytes=2048)
    assert sh["w"].spec == P(None, "fsdp"), sh["w"].spec
    assert sh["v"].spec == P("fsdp", None), sh["v"].spec
    assert sh["odd"].spec == P(), sh["odd"].spec
    assert sh["b"].spec == P(), sh["b"].spec
    assert sh["s"].spec == P()
    placed = memory.shard(tree, sh)
    per = memory.per_device_bytes(placed)
    assert len(per) == 8
    expected = (64 * 256 + 128 * 12) * 4 // 4 + (6 * 1030 + 256 + 1) * 4
    assert set(per.values()) == {expected}, (per, expected)
    # the abstract form gives the same numbers without allocating
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh
    )
    assert memory.per_device_bytes(abstract) == per


@check
def fsdp_over_all_devices_state_bytes():
    # a DP+FSDP (ZeRO-3) layout: parameters and Adam state split over all 8 devices
    m = memory.mesh(data=2, fsdp=4)
    params = init_mlp(0, [256, 1024, 1024, 256])
    # optax.adam's state: a step count and two moments of the parameters' shapes
    opt_state = optax.adam(1e-3).init(params)
    state = (params, opt_state)
    placed = memory.shard(state, memory.fsdp(state, m, axis=("data", "fsdp")))
    per = memory.per_device_bytes(placed)
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    assert max(per.values()) <= 1.05 * total / 8, (max(per.values()), total / 8)
    print(f"# fsdp state bytes: total {total}, per device max {max(per.values())}",
          file=sys.stderr)


@check
def masks_and_codebooks_shard():
    m = memory.mesh(fsdp=8)
    masks = {"w": jnp.ones((64, 128), bool), "b": None}
    cb = {"w": Codebook(jnp.zeros((64, 128), jnp.uint8), jnp.arange(16.0),
                        jnp.ones((64, 128), bool), bits=4)}
    for tree in (masks, cb):
        placed = memory.shard(tree, memory.fsdp(tree, m, min_bytes=1024))
        assert jax.tree.structure(placed) == jax.tree.structure(tree)
        for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(tree)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    placed = memory.shard(cb, memory.fsdp(cb, m, min_bytes=1024))
    assert placed["w"].indices.sharding.spec == P(None, "fsdp")
    assert placed["w"].centroids.sharding.spec == P()
    per = memory.per_device_bytes(placed)
    assert set(per.values()) == {64 * 128 // 8 + 64 * 128 // 8 + 16 * 4}, per


@check
def rules_specs_and_errors():
    m = memory.mesh(data=2, model=4)
    params = init_mlp(1, [16, 64, 8])
    r = memory.rules([(r"Dense_0/kernel", P(None, "model")), (r"bias$", None),
                      (r"kernel", P("model", None))])
    specs = r.specs(params)
    assert specs["Dense_0"]["kernel"] == P(None, "model")
    assert specs["Dense_1"]["kernel"] == P("model", None)  # first match wins
    assert specs["Dense_0"]["bias"] == P()
    placed = memory.shard(params, r(params, m))
    per = memory.per_device_bytes(placed)
    expected = (16 * 64 // 4 + 64 * 8 // 4 + 64 + 8) * 4
    assert set(per.values()) == {expected}, (per, expected)
    try:
        memory.rules([("kernel", P("fsdp", None))])(params, m)
    except ValueError as e:
        assert "'fsdp'" in str(e) and "Dense_0/kernel" in str(e), e
    else:
        raise AssertionError("unknown axis not caught")
    try:
        memory.rules([("bias", P("model", None))])(params, m)
    except ValueError as e:
        assert "Dense_0/bias" in str(e), e
    else:
        raise AssertionError("too long spec not caught")
    odd = {"w": jnp.zeros((6, 8))}
    try:
        memory.rules([("w", P("model", None))])(odd, m)
    except ValueError as e:
        assert "'w'" in str(e) and "divisible" in str(e), e
    else:
        raise AssertionError("indivisible leaf not caught")
    try:
        memory.shard(odd, NamedSharding(m, P("model")))
    except ValueError as e:
        assert "'w'" in str(e), e
    else:
        raise AssertionError("shard of indivisible leaf not caught")


@check
def dp_fsdp_step_equals_one_device():
    sizes = [32, 128, 128, 16]
    params = init_mlp(2, sizes)
    batch = make_batch(3, 64, sizes[0], sizes[-1])
    opt, step = OPT, train_step

    # one device
    dev0 = jax.devices()[0]
    one = jax.device_put((params, opt.init(params), batch), dev0)
    one_step = jax.jit(step)  # one jitted object: the report below reuses its compilation
    p1, s1, l1 = one_step(*one)
    p1, s1, l1b = one_step(p1, s1, one[2])

    m = memory.mesh(data=2, fsdp=4)
    opt_state = opt.init(params)
    p_sh = memory.fsdp(params, m, min_bytes=1024)
    s_sh = memory.fsdp(opt_state, m, min_bytes=1024)
    b_sh = memory.data_sharding(m)
    assert b_sh.spec == P(("data", "fsdp"))
    p, s, b = memory.shard(params, p_sh), memory.shard(opt_state, s_sh), memory.shard(batch, b_sh)
    assert p["Dense_1"]["kernel"].sharding.spec == P("fsdp", None)
    sharded_step = jax.jit(step, out_shardings=(p_sh, s_sh, None))
    p8, s8, l8 = sharded_step(p, s, b)
    p8, s8, l8b = sharded_step(p8, s8, b)
    assert p8["Dense_1"]["kernel"].sharding.spec == P("fsdp", None)
    np.testing.assert_allclose(float(l8), float(l1), rtol=1e-5)
    np.testing.assert_allclose(float(l8b), float(l1b), rtol=1e-5)
    for a, c in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=1e-6)
    # the compiled step's per-device arguments are a fraction of the one-device ones
    r1 = memory.report(one_step, *one, residuals=False)
    r8 = memory.report(sharded_step, p, s, b, residuals=False)
    assert r8.argument_bytes < r1.argument_bytes / 2, (r8.argument_bytes, r1.argument_bytes)
    arg_total = sum(x.nbytes for x in jax.tree.leaves(one))
    assert r1.argument_bytes == arg_total, (r1.argument_bytes, arg_total)
    per_dev = max(memory.per_device_bytes((p, s, b)).values())
    assert r8.argument_bytes == per_dev, (r8.argument_bytes, per_dev)


@check
def accumulate_under_sharding():
    m = memory.mesh(data=8)
    params = init_mlp(4, [8, 16, 4])
    batch = make_batch(5, 64, 8, 4)
    grad_fn = jax.grad(mlp_loss)
    full = jax.jit(grad_fn)(params, batch)
    acc = jax.jit(memory.accumulate(grad_fn, 4))(
        memory.shard(params, NamedSharding(m, P())),
        memory.shard(batch, memory.data_sharding(m)),
    )
    for a, c in zip(jax.tree.leaves(acc), jax.tree.leaves(full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-6)


def main(names):
    assert jax.device_count() == 8, jax.devices()
    for name in names or CHECKS:
        t0 = time.perf_counter()
        try:
            CHECKS[name]()
            print(json.dumps({"check": name, "ok": True, "error": "",
                              "seconds": round(time.perf_counter() - t0, 2)}), flush=True)
        except Exception:
            print(json.dumps({"check": name, "ok": False, "error": traceback.format_exc()}),
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

