"""Structural pruning that shrinks the model: FLOPs, bytes and CPU latency vs dense.

Two models, each at 30% and 50% of every coupled group's channels (and
attention heads) removed with ``prune.groups`` / ``group_scores`` (L2) /
``group_keep`` (uniform) / ``shrink``:

1. a ResNet-18-style CNN (BasicBlocks 2-2-2-2, BatchNorm, 1x1 projection
   shortcuts; input 32x32x3);
2. a stack of pre-LayerNorm Transformer blocks under ``nn.scan`` (Flax
   multi-head attention and an MLP); heads and MLP channels are
   pruned per layer, the residual width stays (LayerNorm reduces over it) and
   so do head dims (the attention scale ``1/sqrt(head_dim)`` is a constant of
   the definition, not a parameter).

For each: compiled FLOPs of the forward pass (``cost_analysis``), bytes of all
variables, CPU latency of the jitted forward of the dense and the shrunk
model, interleaved round by round (min and median), beside a memcpy of the
dense variables' bytes into a preallocated buffer (one memory pass), and the
largest difference between the shrunk model's outputs and the
masked-and-silenced dense model's (``prune.group_masks``): float32 round-off.

Run: ``python benchmarks/shrink.py [--rounds 7] [--batch 8]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from _harness import conditions, load, memcpy, rounds

from jaxrm import prune
from jaxrm import tree as jtree


class BasicBlock(nn.Module):
    inner: int
    out: int
    stride: int = 1
    project: bool = False

    @nn.compact
    def __call__(self, x):
        bn = lambda name: nn.BatchNorm(use_running_average=True, name=name)
        s = (self.stride, self.stride)
        y = nn.relu(bn("bn1")(nn.Conv(self.inner, (3, 3), s, use_bias=False, name="conv1")(x)))
        y = bn("bn2")(nn.Conv(self.out, (3, 3), use_bias=False, name="conv2")(y))
        if self.project:
            x = bn("bnd")(nn.Conv(self.out, (1, 1), s, use_bias=False, name="down")(x))
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """``streams[i]``: stage i's residual width; ``inners[i][j]``: block j's inner width."""

    streams: Sequence[int] = (32, 64, 128, 256)
    inners: Sequence[Sequence[int]] = ((32, 32), (64, 64), (128, 128), (256, 256))
    classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.streams[0], (3, 3), use_bias=False, name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(x))
        for i, (width, inner) in enumerate(zip(self.streams, self.inners)):
            for j, w in enumerate(inner):
                stride = 2 if i and not j else 1
                x = BasicBlock(w, width, stride, project=bool(i and not j), name=f"s{i}b{j}")(x)
        return nn.Dense(self.classes, name="head")(jnp.mean(x, axis=(1, 2)))

    @staticmethod
    def from_sizes(sizes):
        get = lambda name, d: sizes.get(f"params/{name}", (d,))[0]
        ref = ResNet18()
        streams = [get(f"s{i}b0/conv2", w) for i, w in enumerate(ref.streams)]
        inners = [[get(f"s{i}b{j}/conv1", w) for j, w in enumerate(ws)]
                  for i, ws in enumerate(ref.inners)]
        return ResNet18(streams, inners)


class Block(nn.Module):
    heads: int
    head_dim: int
    hidden: int

    @nn.compact
    def __call__(self, x, _):
        h = nn.LayerNorm(name="ln1")(x)
        x = x + nn.MultiHeadDotProductAttention(
            num_heads=self.heads, qkv_features=self.heads * self.head_dim, name="attn")(h, h)
        h = nn.Dense(self.hidden, name="fc1")(nn.LayerNorm(name="ln2")(x))
        return x + nn.Dense(x.shape[-1], name="fc2")(nn.gelu(h)), None


class Transformer(nn.Module):
    heads: int = 8
    head_dim: int = 32
    hidden: int = 1024
    layers: int = 4

    @nn.compact
    def __call__(self, x):
        stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                        length=self.layers)
        x, _ = stack(self.heads, self.head_dim, self.hidden, name="blocks")(x, None)
        return nn.LayerNorm(name="ln")(x)

    @staticmethod
    def from_sizes(sizes):
        heads, dim = sizes["params/blocks/attn/query"]
        return Transformer(heads, dim, sizes["params/blocks/fc1"][0])


def flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"])


def interleaved(fns: dict, n_rounds: int, per_round: int) -> dict:
    """min and median seconds per call of each fn, through the shared harness's rounds."""

    def repeated(fn):
        def run():
            for _ in range(per_round):
                out = jax.block_until_ready(fn())
            return out

        return run

    times = rounds({name: repeated(fn) for name, fn in fns.items()}, n_rounds)
    return {n: (min(t) / per_round, float(np.median(t)) / per_round) for n, t in times.items()}


def case(name, model, rebuild, x, fractions, rounds, per_round, only=None):
    variables = jax.jit(model.init)(jax.random.key(0), x)
    # Non-trivial statistics and shifts, so that BatchNorm's running statistics and
    # a removed channel's constant output would show in the comparison.
    rng = np.random.default_rng(1)

    def perturb(kp, a):
        path = jtree.path_str(kp)
        if path.endswith("var"):
            return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype)
        if path.endswith(("mean", "bias")):
            return jnp.asarray(rng.normal(0.0, 0.1, a.shape), a.dtype)
        return a

    variables = jax.tree_util.tree_map_with_path(perturb, variables)
    gs = prune.groups(model.apply, variables, x)
    if only is not None:
        gs = [g for g in gs if only(g)]
    scores = prune.group_scores(variables, gs)
    dense_fn = jax.jit(model.apply)
    dense_flops, dense_bytes = flops(model.apply, variables, x), jtree.nbytes(variables)
    copy = memcpy(jax.tree.leaves(variables))
    print(f"== {name}: {len(gs)} groups, input {tuple(x.shape)}, "
          f"{dense_flops / 1e9:.3f} GFLOP, {dense_bytes / 2**20:.2f} MiB")
    print(f"{'removed':>8} {'GFLOP':>8} {'vs dense':>9} {'MiB':>7} {'vs dense':>9} "
          f"{'dense ms':>14} {'shrunk ms':>14} {'speed-up':>9} {'memcpy ms':>10} "
          f"{'max |shrunk - masked|':>22}")
    for frac in fractions:
        keep = prune.group_keep(scores, frac)
        small, sizes, _ = prune.shrink(variables, gs, keep)
        small_model = rebuild(sizes)
        masked = prune.apply(variables, prune.group_masks(variables, gs, keep))
        want, got = dense_fn(masked, x), jax.jit(small_model.apply)(small, x)
        diff = float(jnp.max(jnp.abs(got - want)))
        scale = float(jnp.max(jnp.abs(want)))
        small_fn = jax.jit(small_model.apply)
        t = interleaved({
            "dense": lambda: dense_fn(variables, x),
            "shrunk": lambda f=small_fn, s=small: f(s, x),
            "memcpy": copy,
        }, rounds, per_round)
        f, b = flops(small_model.apply, small, x), jtree.nbytes(small)
        fmt = lambda m: f"{m[0] * 1e3:6.2f}/{m[1] * 1e3:6.2f}"
        print(f"{frac:8.0%} {f / 1e9:8.3f} {f / dense_flops:8.2f}x {b / 2**20:7.2f} "
              f"{b / dense_bytes:8.2f}x {fmt(t['dense']):>14} {fmt(t['shrunk']):>14} "
              f"{t['dense'][1] / t['shrunk'][1]:8.2f}x {t['memcpy'][1] * 1e3:10.3f} "
              f"{diff:13.2e} (of {scale:.1f})")
    print("(times: min/median ms over rounds; speed-up of medians)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    conditions("structural pruning: dense against shrunk models")
    rng = np.random.default_rng(0)
    fractions = (0.3, 0.5)
    image = jnp.asarray(rng.normal(size=(args.batch, 32, 32, 3)), jnp.float32)
    case("ResNet-18-style CNN (widths 32-256)", ResNet18(), ResNet18.from_sizes, image,
         fractions, args.rounds, args.per_round)
    tokens = jnp.asarray(rng.normal(size=(args.batch, 64, 256)), jnp.float32)
    # Head dims stay: attention divides by sqrt(head_dim), a constant of the model
    # definition, so removing head dims would change the function (see docs/structural.md).
    case("Transformer, 4 scanned blocks (emb 256, 8 heads x 32, MLP 1024, 64 tokens)",
         Transformer(), Transformer.from_sizes, tokens, fractions, args.rounds, args.per_round,
         only=lambda g: not {("params/blocks/attn/query/kernel", 3),
                             ("params/blocks/attn/value/kernel", 3)} & set(g.members))
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
