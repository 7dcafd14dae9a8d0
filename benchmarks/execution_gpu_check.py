"""Compressed execution on a CUDA device: the measurements of ``execution.py`` on a GPU.

For machines with a GPU (``pip install 'jaxrm[cuda12]'``). It runs the same
Transformer (and ResNet-50-shaped CNN with ``--resnet``) as
``benchmarks/execution.py`` for float32 and jaxrm int8 / packed int4
weight-only (tiled, and int8 untiled: whether the GPU compiler fuses the
dequantization into the matmul without the loop) and int8 w8a8, and the
Transformer under ``nn.scan`` with ``--scan``; it prints compiled argument and temporary bytes,
the relative output error against float32, and latency (min and median over
interleaved rounds), with ``os.getloadavg()``. It exits with an error on a
machine without a GPU; no GPU numbers are claimed in the docs until this
script has run on one.

Run: ``python benchmarks/execution_gpu_check.py [--rounds 20] [--resnet]``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from execution import ResNet50, ScanTransformer, Transformer, run_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--resnet", action="store_true")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--scan", action="store_true", help="also the Transformer under nn.scan")
    args = ap.parse_args()
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        sys.exit("no CUDA device: this check only runs on a machine with a GPU")
    print(f"jax {jax.__version__}, {gpus[0].device_kind}, load {os.getloadavg()}")
    size = dict(vocab=8192, d=512, heads=8, layers=6, mlp=2048)
    tf = Transformer(**size)
    ids = jax.random.randint(jax.random.key(1), (args.batch, 256), 0, tf.vocab)
    run_model("Transformer", tf, ids, args.rounds, jax.random.key(0), with_qwix=True,
              gpu=True)
    if args.scan:
        run_model("Transformer, blocks under nn.scan", ScanTransformer(**size), ids, args.rounds,
                  jax.random.key(0), with_qwix=False, gpu=True)
    if args.resnet:
        img = jax.random.normal(jax.random.key(2), (args.batch, 224, 224, 3), jnp.float32)
        run_model("ResNet-50", ResNet50(), img, args.rounds, jax.random.key(0),
                  with_qwix=True, gpu=True)


if __name__ == "__main__":
    main()
