"""Int8 weight-only error beyond round-to-nearest: GPTQ, and a trained model beside random init.

``python benchmarks/execution.py --error-breakdown`` shows where the int8
error of the random-init Transformer comes from, with every weight rounded to
nearest. This script asks the two questions that table leaves:

1. Does compensating the rounding help? GPTQ (``quant.gptq``, per output
   channel, calibrated on random token batches like the evaluation input)
   on every kernel of the same Transformer, the embedding rounded per row
   (GPTQ needs an input Hessian, which a table lookup has not), symmetric and
   asymmetric grids, next to round-to-nearest on the same leaves.
2. Is the error a property of int8 or of random init? The same int8
   weight-only (run through ``quant.quantized``) on the byte-level GPT that
   ``make reproduce-llm`` trains (read from its cache under ``build/llm/``;
   skipped with a note when the cache is absent), once with the trained
   weights and once with the same model's random init, on held-out text.
3. Like for like with Qwix: Qwix's int8 weight-only and w8a8 leave the
   embedding in float, so jaxrm quantizing the same leaves (every kernel,
   per output channel) sits beside them on the random-init Transformer.

Errors are ``||y_q - y|| / ||y||`` of the logits; they do not depend on the
machine's load, which is printed anyway. Run: ``python
benchmarks/execution_error.py [--batches 16]`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from execution import Transformer, qwix_variants, rel

from jaxrm import calib, coding, quant

ROOT = Path(__file__).resolve().parents[1]


def gptq_rows(n_batches: int) -> None:
    tf = Transformer(vocab=8192, d=512, heads=8, layers=6, mlp=2048)
    ids = jax.random.randint(jax.random.key(1), (2, 64), 0, tf.vocab)  # execution.py's input
    params = tf.init(jax.random.key(0), ids)["params"]
    fn = lambda p, x: tf.apply({"params": p}, x)
    f = jax.jit(fn)
    y = np.asarray(f(params, ids))
    batches = [jax.random.randint(jax.random.key(100 + i), (8, 64), 0, tf.vocab)
               for i in range(n_batches)]
    t = time.perf_counter()
    stats = calib.collect(fn, params, batches, where=r"kernel$")
    print(f"\n== int8 on the random-init Transformer (6 blocks, d 512): GPTQ against "
          f"round-to-nearest; calibration {n_batches} x 8 x 64 random tokens "
          f"({time.perf_counter() - t:.0f} s)")
    emb = quant.uniform(params, 8, axis="channel", where="embedding$")["Embed_0"]

    def err(q, with_embedding):
        q = {**q, "Embed_0": emb} if with_embedding else q
        return rel(np.asarray(f(quant.dequantize(q), ids)), y)

    rtn = quant.uniform(params, 8, axis="channel", where=r"kernel$")
    rows = {"round-to-nearest, per channel": (err(rtn, False), err(rtn, True))}
    for symmetric in (True, False):
        q = quant.gptq(params, stats, 8, symmetric=symmetric, where=r"kernel$")
        grid = "symmetric" if symmetric else "asymmetric"
        rows[f"GPTQ, per channel, {grid}"] = (err(q, False), err(q, True))
    print(f"{'kernels':<36}{'kernels only':>14}{'+ embedding (RTN per row)':>28}")
    for name, (alone, everything) in rows.items():
        print(f"{name:<36}{alone:>14.2e}{everything:>28.2e}")
    qwix_rows(tf, {"params": params}, ids, y)


def trained_rows() -> None:
    sys.path.insert(0, str(ROOT))
    from experiments import gpt, kjv
    from experiments.llm_compression import CONFIGS

    cfg = CONFIGS["full"]
    cached = sorted(kjv.CACHE.glob("float-full-*.jrm"))
    if not cached or not (kjv.CACHE / "kjv.txt").exists():
        print("\n(no trained LM under build/llm/: run `make reproduce-llm` first for its rows)")
        return
    _, test, vocab = kjv.splits(kjv.text(kjv.CACHE))
    model = gpt.GPT(gpt.GPTConfig(len(vocab), cfg["d_model"], cfg["heads"], cfg["layers"],
                                  cfg["context"]))
    init = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    trained = coding.load(cached[-1], like=init)
    starts = np.random.default_rng(5).integers(0, len(test) - cfg["context"], 16)
    x = jnp.asarray(np.stack([test[s : s + cfg["context"]] for s in starts]))
    apply = lambda p, t: model.apply({"params": p}, t)
    f, run_q = jax.jit(apply), jax.jit(quant.quantized(apply))
    print(f"\n== int8 weight-only on the byte-level GPT of `make reproduce-llm` "
          f"({cfg['layers']} blocks under nn.scan, d {cfg['d_model']}; {cached[-1].name}), "
          f"16 held-out windows of {cfg['context']} bytes")
    print(f"{'weights':<14}{'everything':>12}{'kernels only':>14}")
    stacked = [("^blocks/", 0), (".*", None)]
    for name, p in (("trained", trained), ("random init", init)):
        y = f(p, x)
        everything = quant.uniform(p, 8, axis="channel", stacked=stacked)
        kernels = quant.uniform(p, 8, axis="channel", stacked=stacked, where=r"kernel$")
        print(f"{name:<14}{rel(run_q(everything, x), y):>12.2e}"
              f"{rel(run_q(kernels, x), y):>14.2e}")


def qwix_rows(tf, variables, ids, y) -> None:
    params = variables["params"]
    apply = lambda p, x: tf.apply({"params": p}, x)
    kernels = quant.uniform(params, 8, axis="channel", where=r"kernel$")
    rows = {
        "jaxrm int8, kernels": rel(jax.jit(quant.quantized(apply))(kernels, ids), y),
        "jaxrm w8a8, kernels": rel(
            jax.jit(quant.quantized(apply, activations="int8-dynamic"))(kernels, ids), y),
    }
    for name, (fn, p) in qwix_variants(tf, variables, ids).items():
        rows[name.replace("qwix", "Qwix")] = rel(jax.jit(fn)(p, ids), y)
    print("\n== the same leaves as Qwix (every kernel; the embedding stays float)")
    for name, e in rows.items():
        print(f"{name:<36}{e:>14.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=16, help="GPTQ calibration batches")
    args = ap.parse_args()
    start = time.perf_counter()
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, load {os.getloadavg()}")
    trained_rows()
    gptq_rows(args.batches)
    print(f"load after: {os.getloadavg()}, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
