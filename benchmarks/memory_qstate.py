"""8-bit optimizer state (memory.quantized_state) against float Adam: bytes, curves, step time.

Run: python benchmarks/memory_qstate.py [--steps 100] [--seeds 3]   (about 2 minutes on CPU)

Two models trained with optax.adam and with memory.quantized_state(optax.adam)
from the same initialisation and the same batches, three seeds each:
* a character-level Transformer LM (2 pre-norm blocks, d=64, 4 heads, context
  64) on the text of this repository's docs (held-out tail for validation);
* LeNet-300-100 (784-300-100-10) on scikit-learn's 8x8 digits upsampled to
  28x28 (MNIST's size; MNIST itself needs a download this script avoids).
Prints the optimizer-state bytes of both, the compiled training step's
argument and temporary bytes with each, final train/validation loss (mean
and spread over seeds), and the time of one jitted training step, the two
optimizers timed alternately round by round (min and median), beside the
time of one memcpy of the model's parameters and the machine's load average.
Then, for a 25M-parameter Transformer LM (8 blocks, d=512; step time only)
and for each model, the optimizer update alone (gradients given), so the
coding's own cost shows beside the step's.

With --parts (about 20 s): LeNet's training step with float Adam, with the
8-bit state, and with the 8-bit state less its encoding pass, its block maxima,
its sign test or all three (an ablation, not a usable optimizer), so each
pass's share of the step shows.
"""

import argparse
import glob
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _harness import conditions, load, memcpy, rounds, table
from flax import linen as nn

from jaxrm import memory
from jaxrm.tree import nbytes

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- data


def text_data(seq):
    text = "".join(Path(f).read_text() for f in sorted(glob.glob(str(ROOT / "docs" / "*.md"))))
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], np.int32)
    split = int(0.9 * len(ids))
    return ids[:split], ids[split:], len(chars)


def lm_batches(ids, seq, batch, steps, seed):
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - seq - 1, (steps, batch))
    return np.stack([ids[s : s + seq + 1] for s in starts.reshape(-1)]).reshape(steps, batch, -1)


def digits_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32) / 16.0
    x = np.asarray(jax.image.resize(x, (len(x), 28, 28), "linear")).reshape(len(x), -1)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], d.target[order].astype(np.int32)
    return (x[:1500], y[:1500]), (x[1500:], y[1500:])


# ---------------------------------------------------------------- models


class Block(nn.Module):
    d: int
    heads: int

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, h, mask=mask)
        h = nn.Dense(4 * self.d)(nn.LayerNorm()(x))
        return x + nn.Dense(self.d)(nn.gelu(h))


class CharLM(nn.Module):
    vocab: int
    d: int = 64
    heads: int = 4
    layers: int = 2
    seq: int = 64

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab, self.d)(tokens)
        x = x + self.param("pos", nn.initializers.normal(0.02), (self.seq, self.d))
        for _ in range(self.layers):
            x = Block(self.d, self.heads)(x)
        return nn.Dense(self.vocab)(nn.LayerNorm()(x))


class LeNet300(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(300)(x))
        x = nn.relu(nn.Dense(100)(x))
        return nn.Dense(10)(x)


def lm_loss(model):
    def loss(params, batch):
        logits = model.apply(params, batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

    return loss


def cls_loss(model):
    def loss(params, batch):
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

    return loss


def make_step(loss, tx, grad=None):
    """A jitted training step; ``grad`` replaces ``jax.value_and_grad(loss)`` if given."""
    grad = grad or jax.value_and_grad(loss)

    @jax.jit
    def step(params, state, batch):
        value, grads = grad(params, batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    return step


# ---------------------------------------------------------------- runs


def optimizers(lr):
    return {"adam": optax.adam(lr), "adam 8-bit": memory.quantized_state(optax.adam(lr))}


def train(loss, params, tx, batches, eval_fn):
    step = make_step(loss, tx)
    state = tx.init(params)
    for b in batches:
        params, state, value = step(params, state, b)
    return float(value), float(eval_fn(params)), state


def time_updates(params, txs, n_rounds):
    """The optimizer's update alone (gradients = parameters), state carried."""
    contenders = {}
    for name, tx in txs.items():
        update = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p))
        state = update(params, tx.init(params), params)[1]
        contenders[name] = lambda u=update, s=state: u(params, s, params)
    contenders["memcpy"] = memcpy(jax.tree.leaves(params))
    return rounds(contenders, n_rounds)


def time_steps(loss, params, txs, batch, n_rounds):
    steps = {name: make_step(loss, tx) for name, tx in txs.items()}
    states = {name: tx.init(params) for name, tx in txs.items()}
    contenders = {name: (lambda f=f, s=states[name]: f(params, s, batch))
                  for name, f in steps.items()}
    contenders["memcpy"] = memcpy(jax.tree.leaves(params))
    return rounds(contenders, n_rounds)


def report(title, loss, init, txs, runs, batch, n_rounds):
    print(f"\n== {title}")
    params = init(0)
    float_bytes = nbytes(txs["adam"].init(params))
    q_bytes = nbytes(txs["adam 8-bit"].init(params))
    print(f"parameters {nbytes(params):,} B; optimizer state: adam {float_bytes:,} B, "
          f"8-bit {q_bytes:,} B, ratio {q_bytes / float_bytes:.3f} (target <= 0.27)")
    results = {name: [] for name in txs} if runs else {}
    for seed, (batches, eval_fn) in enumerate(runs):
        for name, tx in txs.items():
            results[name].append(train(loss, init(seed), tx, batches, eval_fn)[:2])
    for name, rs in results.items():
        tr, va = np.array(rs).T
        print(f"  {name:<11} final train loss {tr.mean():.4f} +- {tr.std():.4f}   "
              f"validation {va.mean():.4f} +- {va.std():.4f}   (seeds: "
              + ", ".join(f"{v:.4f}" for v in va) + ")")
    for name, tx in txs.items():  # what the state saves must survive in the compiled step
        m = make_step(loss, tx).lower(params, tx.init(params), batch).compile().memory_analysis()
        args, temp = m.argument_size_in_bytes / 1e6, m.temp_size_in_bytes / 1e6
        print(f"  compiled training step, {name:<11} arguments {args:8.1f} MB  "
              f"temporaries {temp:8.1f} MB  sum {args + temp:8.1f} MB")
    notes = {"adam 8-bit": "target <= 1.15 x adam", "memcpy": "one pass over the parameters"}
    print("training step:")
    table(time_steps(loss, params, txs, batch, n_rounds), "adam", notes=notes)
    print("optimizer update alone:")
    table(time_updates(params, txs, n_rounds), "adam",
          notes={"memcpy": "one pass over the parameters"})


def parts(n_rounds):
    """LeNet's training step with float Adam, with the 8-bit state, and with the 8-bit
    state less one of its passes (an ablation, not a usable optimizer: the codes or the
    scales it stores are wrong), so each pass's share of the step shows."""
    import contextlib

    from jaxrm.memory import _qmaps
    from jaxrm.memory import _qstate as q

    full_range, full_coders = q._block_range, q._CODERS

    def ones_range(flat, block):
        return jnp.ones(-(-flat.size // block)), jnp.min(flat) >= 0

    def no_sign(flat, block):
        return full_range(flat, block)[0], jnp.asarray(False)

    def neither(flat, block):
        return ones_range(flat, block)[0], jnp.asarray(False)

    no_codes = {"dynamic": (lambda v, u: jnp.zeros(v.shape, jnp.uint8), _qmaps._dynamic_values)}
    ablations = {
        "adam 8-bit": {},
        "  less encoding": {"_CODERS": no_codes},
        "  less block maxima": {"_block_range": ones_range},
        "  less sign test": {"_block_range": no_sign},
        "  decoding only": {"_block_range": neither, "_CODERS": no_codes},
    }

    @contextlib.contextmanager
    def patched(names):
        saved = {n: getattr(q, n) for n in names}
        try:
            for n, f in names.items():
                setattr(q, n, f)
            q._quantize.clear_cache()  # a jitted helper: trace it again with the patch
            yield
        finally:
            for n, f in saved.items():
                setattr(q, n, f)
            q._quantize.clear_cache()

    (xtr, ytr), _ = digits_data()
    net = LeNet300()
    loss = cls_loss(net)
    params = net.init(jax.random.key(0), jnp.zeros((1, 784)))
    batch = (jnp.asarray(xtr[:64]), jnp.asarray(ytr[:64]))
    contenders = {}
    for name, names in {"adam": None, **ablations}.items():
        tx = optax.adam(1e-3) if names is None else memory.quantized_state(optax.adam(1e-3))
        state = tx.init(params)
        with patched(names or {}):  # traced and compiled with the pass removed
            step = make_step(loss, tx).lower(params, state, batch).compile()
        contenders[name] = lambda f=step, s=state: f(params, s, batch)
    contenders["memcpy"] = memcpy(jax.tree.leaves(params))
    assert q._block_range is full_range and q._CODERS is full_coders
    table(rounds(contenders, n_rounds), "adam",
          notes={"adam 8-bit": "target <= 1.15 x adam", "memcpy": "one pass over the parameters"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--large-rounds", type=int, default=4)
    ap.add_argument("--parts", action="store_true", help="time the update's passes alone")
    args = ap.parse_args()
    if args.parts:
        conditions("8-bit state: LeNet-300-100's step less each pass of the 8-bit update")
        parts(args.rounds * 10)
        return
    conditions("8-bit optimizer state against float Adam")

    seq, batch = 64, 32
    train_ids, val_ids, vocab = text_data(seq)
    lm = CharLM(vocab, seq=seq)
    val = jnp.asarray(lm_batches(val_ids, seq, 64, 1, 123)[0])
    loss = lm_loss(lm)
    runs = [([jnp.asarray(b) for b in lm_batches(train_ids, seq, batch, args.steps, s)],
             jax.jit(lambda p, v=val: loss(p, v))) for s in range(args.seeds)]
    report("char Transformer LM (docs text)", loss,
           lambda s: lm.init(jax.random.key(s), jnp.zeros((1, seq), jnp.int32)),
           optimizers(3e-3), runs, runs[0][0][0], args.rounds)

    (xtr, ytr), (xte, yte) = digits_data()
    net = LeNet300()
    closs = cls_loss(net)
    test = jax.jit(lambda p: closs(p, (xte, yte)))
    runs = []
    for s in range(args.seeds):
        idx = np.random.default_rng(s).integers(0, len(xtr), (args.steps, 64))
        runs.append(([(jnp.asarray(xtr[i]), jnp.asarray(ytr[i])) for i in idx], test))
    report("LeNet-300-100 (digits at 28x28)", closs,
           lambda s: net.init(jax.random.key(s), jnp.zeros((1, 784))),
           optimizers(1e-3), runs, runs[0][0][0], args.rounds)

    big = CharLM(vocab, d=512, heads=8, layers=8, seq=seq)
    tokens = jnp.asarray(lm_batches(train_ids, seq, 4, 1, 0)[0])
    report("Transformer LM, 25M parameters (8 blocks, d=512; batch 4 x 64 tokens)",
           lm_loss(big), lambda s: big.init(jax.random.key(s), jnp.zeros((1, seq), jnp.int32)),
           optimizers(1e-3), [], tokens, args.large_rounds)
    print(f"\n{load()}")


if __name__ == "__main__":
    main()
