"""Compressed execution: device bytes, output error and CPU latency, jaxrm beside Qwix.

Two Linen models with random-init weights, written here:

* a Transformer (token embedding, ``--layers`` pre-norm blocks of attention
  and a GELU MLP, an output head; about 25M parameters at the defaults);
* a ResNet-50-shaped CNN (bottleneck blocks [3, 4, 6, 3], widths 64..2048,
  BatchNorm; 25.5M parameters), run on small images so the benchmark stays
  short on a CPU.

For each model and each variant (float32; jaxrm int8 and packed int4
weight-only, int8 w8a8 with dynamic per-row activation ranges; Qwix
``PtqProvider`` int8 weight-only and w8a8 on the same float weights), one run
reports side by side:

* ``argument_size_in_bytes`` and ``temp_size_in_bytes`` of the compiled,
  jitted forward pass (what device memory holds for the parameters and the
  scratch), with the ratio to float32;
* the relative output error ``||y - y_float|| / ||y_float||`` against the
  float32 model on the original weights, and for jaxrm weight-only against
  ``apply(dequantize(q))`` too;
* CPU latency, min and median over ``--rounds`` interleaved rounds (each
  round calls every variant once), beside a memcpy of the float32 parameter
  bytes into a preallocated buffer (one memory pass).

Run: ``python benchmarks/execution.py`` (``--small`` for a quick check;
``--memory-scheduler`` adds the temp* column, compiled with XLA's
memory-optimized CPU scheduler; ``--error-breakdown`` the int8 error with one
part of the Transformer quantized at a time).
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrm import quant

# ----------------------------------------------------------------------------- models


class Block(nn.Module):
    d: int
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x):
        b, t, _ = x.shape
        h = nn.LayerNorm()(x)
        q, k, v = (nn.Dense(self.d, name=n)(h).reshape(b, t, self.heads, -1) for n in "qkv")
        a = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
        mask = jnp.tril(jnp.ones((t, t), bool))
        a = jax.nn.softmax(jnp.where(mask, a, -1e9), axis=-1)
        o = jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, t, self.d)
        x = x + nn.Dense(self.d, name="o")(o)
        h = nn.LayerNorm()(x)
        return x + nn.Dense(self.d, name="down")(nn.gelu(nn.Dense(self.mlp, name="up")(h)))


class Transformer(nn.Module):
    vocab: int
    d: int
    heads: int
    layers: int
    mlp: int

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(self.vocab, self.d)(ids)
        for i in range(self.layers):
            x = Block(self.d, self.heads, self.mlp, name=f"block_{i}")(x)
        return nn.Dense(self.vocab, name="head")(nn.LayerNorm()(x))


class _ScanBlock(Block):
    def __call__(self, x, _):
        return super().__call__(x), None


class ScanTransformer(Transformer):
    """``Transformer`` with its blocks under ``nn.scan`` (weights stacked on axis 0)."""

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(self.vocab, self.d)(ids)
        blocks = nn.scan(_ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                         length=self.layers)
        x, _ = blocks(self.d, self.heads, self.mlp, name="blocks")(x, None)
        return nn.Dense(self.vocab, name="head")(nn.LayerNorm()(x))


class Bottleneck(nn.Module):
    width: int
    stride: int

    @nn.compact
    def __call__(self, x):
        bn = lambda: nn.BatchNorm(use_running_average=True)
        y = nn.relu(bn()(nn.Conv(self.width, (1, 1), use_bias=False)(x)))
        y = nn.Conv(self.width, (3, 3), (self.stride, self.stride), use_bias=False)(y)
        y = nn.relu(bn()(y))
        y = bn()(nn.Conv(4 * self.width, (1, 1), use_bias=False)(y))
        if x.shape[-1] != 4 * self.width or self.stride != 1:
            x = nn.Conv(4 * self.width, (1, 1), (self.stride, self.stride), use_bias=False)(x)
            x = bn()(x)
        return nn.relu(x + y)


class ResNet50(nn.Module):
    classes: int = 1000

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(64, (7, 7), (2, 2), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            for i in range(blocks):
                x = Bottleneck(width, 2 if i == 0 and stage > 0 else 1)(x)
        return nn.Dense(self.classes)(jnp.mean(x, axis=(1, 2)))


# ----------------------------------------------------------------------------- variants


def jaxrm_variants(model, variables):
    """``name -> (fn, args)`` for float32 and the jaxrm variants."""
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    def apply(p, x):
        return model.apply({"params": p, **rest}, x)

    # Per output channel, read off each leaf's layout (axis="channel"): the last axis
    # of every Flax Dense and Conv kernel, the rows of the embedding (its output is a
    # row lookup); scanned kernels per layer.
    axis = "channel"
    stacked = [("^blocks/", 0), (".*", None)]
    int8 = quant.uniform(params, 8, axis=axis, stacked=stacked)
    int4 = quant.uniform(params, 4, axis=axis, group_size=128, pack=True, stacked=stacked)
    return params, apply, {
        "float32": (apply, params),
        "jaxrm int8": (quant.quantized(apply), int8),
        "jaxrm int8 untiled": (quant.quantized(apply, tile_bytes=None), int8),
        "jaxrm int4 (g128)": (quant.quantized(apply), int4),
        "jaxrm w8a8": (quant.quantized(apply, activations="int8-dynamic"), int8),
    }


def _is_qwix(x) -> bool:
    return type(x).__name__ == "WithAux"


def dequantized(name: str, p):
    """The float weights a variant's quantized weights stand for."""
    if name.startswith("qwix"):
        import qwix

        return jax.tree.map(lambda x: qwix.dequantize(x.array) if _is_qwix(x) else x, p,
                            is_leaf=_is_qwix)
    return quant.dequantize(p)


def qwix_variants(model, variables, x):
    import qwix

    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    out = {}
    for name, act in (("qwix int8", None), ("qwix w8a8", jnp.int8)):
        rule = qwix.QuantizationRule(module_path=".*", weight_qtype=jnp.int8, act_qtype=act)
        qmodel = qwix.quantize_model(model, qwix.PtqProvider([rule]))
        try:
            abstract = jax.eval_shape(qmodel.init, jax.random.key(0), x)["params"]
        except ValueError as e:  # Qwix refuses weight-only convolutions
            print(f"{name}: not run, Qwix says: {str(e).splitlines()[0]}")
            continue
        qparams = qwix.quantize_params(params, abstract)

        def apply(p, x, qmodel=qmodel):
            return qmodel.apply({"params": p, **rest}, x)

        out[name] = (apply, qparams)
    return out


# XLA's CPU scheduler that orders ops for the lowest peak memory. The default
# one may dequantize every weight up front (they depend on the arguments
# alone) and hold all float copies at once.
MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def memory(fn, params, x, options=None):
    compiled = jax.jit(fn).lower(params, x).compile(compiler_options=options)
    m = compiled.memory_analysis()
    return compiled, int(m.argument_size_in_bytes), int(m.temp_size_in_bytes)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run_model(title, model, x, rounds, key, with_qwix=True, gpu=False, only=None,
              scheduler=False):
    variables = model.init(key, x)
    params, _apply, variants = jaxrm_variants(model, variables)
    if with_qwix:
        variants.update(qwix_variants(model, variables, x))
    if only is not None:
        variants = {k: v for k, v in variants.items() if k in only}
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    print(f"\n== {title}: {n / 1e6:.1f}M parameters, input {tuple(x.shape)}")
    compiled, rows = {}, {}
    for name, (fn, p) in variants.items():
        c, arg, temp = memory(fn, p, x)
        # The scheduler option is the CPU compiler's; on a GPU temp* repeats temp.
        temp_mem = memory(fn, p, x, MEMORY_SCHEDULER)[2] if scheduler and not gpu else None
        compiled[name] = (c, p)
        rows[name] = {"arg": arg, "temp": temp, "temp_mem": temp_mem}
    y_float = np.asarray(compiled["float32"][0](params, x))
    for name, (c, p) in compiled.items():
        y = np.asarray(c(p, x))
        rows[name]["err"] = rel(y, y_float)
        if name != "float32":
            # against the float model on the weights this variant's integers stand for
            deq = np.asarray(compiled["float32"][0](dequantized(name, p), x))
            rows[name]["err_deq"] = rel(y, deq)
            rows[name]["same"] = bool(np.array_equal(y, deq))
    buf_src = np.ones(sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params)), np.float32)
    buf_dst = np.empty_like(buf_src)
    times = {name: [] for name in compiled}
    times["memcpy (float32 params)"] = []
    for _ in range(rounds):
        for name, (c, p) in compiled.items():
            t = time.perf_counter()
            jax.block_until_ready(c(p, x))
            times[name].append(time.perf_counter() - t)
        t = time.perf_counter()
        np.copyto(buf_dst, buf_src)
        times["memcpy (float32 params)"].append(time.perf_counter() - t)
    base = rows["float32"]
    print(f"{'variant':<22}{'arg MB':>9}{'x float':>9}{'temp MB':>9}{'x float':>9}"
          f"{'temp* MB':>9}{'x float':>9}"
          f"{'rel err':>10}{'vs deq':>10}{'min ms':>9}{'med ms':>9}{'x float':>9}")
    t_float = float(np.median(times["float32"]))
    for name, r in rows.items():
        tm = np.asarray(times[name]) * 1e3
        deq = f"{r['err_deq']:.1e}" if "err_deq" in r else "-"
        if r.get("same"):
            deq = "0 (same)"
        print(f"{name:<22}{r['arg'] / 1e6:>9.2f}{r['arg'] / base['arg']:>9.3f}"
              f"{r['temp'] / 1e6:>9.2f}{r['temp'] / max(base['temp'], 1):>9.3f}"
              + (f"{r['temp_mem'] / 1e6:>9.2f}{r['temp_mem'] / max(base['temp_mem'], 1):>9.3f}"
                 if r["temp_mem"] is not None else f"{'-':>9}{'-':>9}")
              + f"{r['err']:>10.1e}{deq:>10}{tm.min():>9.1f}{np.median(tm):>9.1f}"
              f"{np.median(tm) / 1e3 / t_float:>9.2f}")
    tm = np.asarray(times["memcpy (float32 params)"]) * 1e3
    print(f"{'memcpy (float32 params)':<22}{'':>72}{tm.min():>9.1f}{np.median(tm):>9.1f}")
    print("temp*: compiled with the memory-optimized CPU scheduler (MEMORY_SCHEDULER, "
          "--memory-scheduler); latency with the default one")
    return rows


def _noise_like_rounding(params, q, key):
    """``params`` plus independent uniform noise of each quantized leaf's step (+-step/2)."""
    flat, treedef = jax.tree_util.tree_flatten(params)
    qs = jax.tree_util.tree_leaves(q, is_leaf=quant.is_quantized)
    out = [x + jax.random.uniform(jax.random.fold_in(key, i), x.shape, minval=-0.5,
                                  maxval=0.5) * v.scale if quant.is_quantized(v) else x
           for i, (x, v) in enumerate(zip(flat, qs))]
    return jax.tree_util.tree_unflatten(treedef, out)


def error_breakdown(tf, ids, key) -> None:
    """Output error of int8 weight-only with one group of weights quantized at a time."""
    params = tf.init(key, ids)["params"]
    f = jax.jit(lambda p, x: tf.apply({"params": p}, x))
    y = np.asarray(f(params, ids))

    def err(where, p=None, **kw):
        p = params if p is None else p
        q = quant.uniform(p, 8, axis=kw.pop("axis", "channel"), where=where, **kw)
        return rel(np.asarray(f(quant.dequantize(q), ids)), np.asarray(f(p, ids)))

    print(f"\n== int8 weight-only error by part ({tf.layers} blocks), load {os.getloadavg()}")
    blocks = [err(rf"block_{i}/.*kernel") for i in range(tf.layers)]
    rows = {
        "everything (per channel, embedding per row)": err(None),
        "embedding only (per row)": err("embedding$"),
        "embedding only (per column)": err("embedding$", axis=-1),
        "head only": err("head/kernel"),
        "blocks only": err(r"block.*kernel"),
        "blocks and head (what Qwix quantizes: the embedding stays float)": err(r"kernel$"),
        **{f"block {i} only": e for i, e in enumerate(blocks)},
        "q and k only (all blocks)": err(r"/(q|k)/kernel"),
        "v and o only": err(r"/(v|o)/kernel"),
        "up and down only": err(r"/(up|down)/kernel"),
        "everything, per tensor": err(None, axis=None),
        "everything, calibration='mse'": err(None, calibration="mse"),
        "everything, group_size=128": err(None, group_size=128),
        "everything, group_size=32": err(None, group_size=32),
    }
    parts = [rows["embedding only (per row)"], rows["head only"], *blocks]
    rows["quadrature of embedding, head and blocks"] = float(np.sqrt(np.sum(np.square(parts))))
    noisy = _noise_like_rounding(params, quant.uniform(params, 8, axis="channel"),
                                 jax.random.key(7))
    rows["uniform noise of each step instead of rounding"] = rel(np.asarray(f(noisy, ids)), y)
    d = params["Embed_0"]["embedding"].shape[1]
    big = {**params, "Embed_0": {"embedding": params["Embed_0"]["embedding"] * np.sqrt(d)}}
    rows["embedding x sqrt(d) (std 1): everything"] = err(None, p=big)
    rows["embedding x sqrt(d) (std 1): blocks only"] = err(r"block.*kernel", p=big)
    for name, e in rows.items():
        print(f"{name:<46}{e:>10.2e}")
    _, inter = tf.apply({"params": params}, ids, capture_intermediates=True)
    inter = inter["intermediates"]
    prev = np.asarray(inter["Embed_0"]["__call__"][0])
    print(f"rms of the embedding output {np.sqrt(np.mean(prev**2)):.3f}; what each block adds:",
          end="")
    for i in range(tf.layers):
        out = np.asarray(inter[f"block_{i}"]["__call__"][0])
        print(f" {np.sqrt(np.mean((out - prev) ** 2)):.3f}", end="")
        prev = out
    print(f"; the stream before the head {np.sqrt(np.mean(prev**2)):.3f}")
    q = quant.dequantize(quant.uniform(params, 8, axis="channel"))
    for k in (("Embed_0", "embedding"), ("block_0", "up", "kernel"), ("head", "kernel")):
        get = lambda t, k=k: functools.reduce(lambda a, b: a[b], k, t)
        print(f"weight error {'/'.join(k):<33}{rel(get(q), get(params)):>10.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny models, a quick check")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-qwix", action="store_true")
    ap.add_argument("--only", choices=("transformer", "scan", "resnet"), default=None)
    ap.add_argument("--memory-scheduler", action="store_true",
                    help="also compile with the memory-optimized CPU scheduler (temp* column)")
    ap.add_argument("--error-breakdown", action="store_true",
                    help="also: the int8 error with one part of the Transformer quantized")
    args = ap.parse_args()
    start = time.perf_counter()
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, load {os.getloadavg()}")
    key = jax.random.key(0)
    if args.small:
        size = dict(vocab=512, d=128, heads=4, layers=2, mlp=512)
        ids, img, classes = jnp.zeros((2, 16), jnp.int32), jnp.zeros((1, 32, 32, 3)), 10
    else:
        size = dict(vocab=8192, d=512, heads=8, layers=6, mlp=2048)
        ids, img, classes = jnp.zeros((2, 64), jnp.int32), jnp.zeros((1, 64, 64, 3)), 1000
    tf = Transformer(**size)
    ids = jax.random.randint(jax.random.key(1), ids.shape, 0, tf.vocab)
    img = jax.random.normal(jax.random.key(2), img.shape)
    if args.only in (None, "transformer"):
        run_model("Transformer", tf, ids, args.rounds, key, not args.no_qwix,
                  scheduler=args.memory_scheduler)
    if args.only in (None, "scan"):
        run_model("Transformer, blocks under nn.scan", ScanTransformer(**size), ids, args.rounds,
                  key, False, only=("float32", "jaxrm int8", "jaxrm int8 untiled",
                                    "jaxrm int4 (g128)", "jaxrm w8a8"),
                  scheduler=args.memory_scheduler)
    if args.only in (None, "resnet"):
        run_model("ResNet-50", ResNet50(classes), img, args.rounds, key, not args.no_qwix,
                  scheduler=args.memory_scheduler)
    if args.error_breakdown:
        error_breakdown(tf, ids, key)
    print(f"load after: {os.getloadavg()}, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
