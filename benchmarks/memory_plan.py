"""A memory plan on a Transformer LM: the largest batch that trains within a budget, with
and without memory.plan.

Run: python benchmarks/memory_plan.py [--budget-mib 256]   (about 25 compilations: 9 minutes
on 2 shared CPU cores at load 10-15, a few on a quiet machine)

Model: a character Transformer LM (d=128, 4 pre-norm blocks under nn.scan, 4 heads,
context 128, vocabulary 96), trained with optax.adam. The budget is the compiled
step's peak estimate (MemoryReport.total_bytes; this CPU has no device limit):
* without the plan: the plain step (no remat, one batch, float state) and the largest
  batch that fits, found by memory.fit_batch;
* with the plan: memory.plan over remat policies on the scanned blocks (through
  memory.remat_modules: "none" or "full"), micro-batches (1 or 8) and float or
  8-bit state, at 4 x that batch; then memory.fit_batch finds the largest batch
  the chosen configuration fits.
Both steps are then compiled at their batch, their bytes checked against the
budget, and one step of each run on real tokens and timed.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from _harness import conditions, load
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name
from memory_qstate import make_step

from jaxrm import memory

VOCAB, SEQ, D, HEADS, LAYERS = 96, 128, 128, 4, 4


class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        h = nn.LayerNorm()(x)
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS)(h, h, mask=mask)
        h = checkpoint_name(nn.gelu(nn.Dense(4 * D)(nn.LayerNorm()(x))), "mlp_hidden")
        return x + nn.Dense(D)(h), None


class LM(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(VOCAB, D)(tokens)
        x = x + self.param("pos", nn.initializers.normal(0.02), (SEQ, D))
        x, _ = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=LAYERS)(name="blocks")(x, None)
        return nn.Dense(VOCAB)(nn.LayerNorm()(x))


def loss_of(model):
    def loss(params, tokens):
        logits = model.apply(params, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    return loss


def loss_for_policy(policy):
    model = LM() if policy == "none" else memory.remat_modules(
        LM(), [(r"^blocks$", policy)], prevent_cse=False)
    return loss_of(model)


def tokens(n):
    return jax.ShapeDtypeStruct((n, SEQ + 1), jnp.int32)


def option_step(option, optimizer):
    tx = memory.quantized_state(optimizer) if option.quantized else optimizer
    grad = jax.value_and_grad(loss_for_policy(option.policy))
    if option.micro_batches > 1:
        grad = memory.accumulate(grad, option.micro_batches)
    return make_step(None, tx, grad), tx


def timed(step, params, state, batch, n=2):
    jax.block_until_ready(step(params, state, batch))
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(step(params, state, batch))
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-mib", type=float, default=256.0)
    ap.add_argument("--factor", type=int, default=4,
                    help="plan at this multiple of the plain step's largest batch")
    ap.add_argument("--micro", type=int, default=8, help="the split the plan may use")
    args = ap.parse_args()
    conditions("memory.plan on a scanned Transformer LM")
    budget = int(args.budget_mib * 2**20)
    optimizer = optax.adam(1e-3)
    params = jax.eval_shape(lambda: LM().init(jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32)))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"model: {n_params:,} parameters, context {SEQ}; budget {memory.format_bytes(budget)}"
          f" (compiled total bytes per device)")
    state = jax.eval_shape(optimizer.init, params)
    step = make_step(loss_of(LM()), optimizer)
    plain = memory.fit_batch(lambda n: (step, (params, state, tokens(n))), budget,
                             start=4, multiple_of=4, progress=False)
    plain_bytes = memory.report(step, params, state, tokens(plain), residuals=False).total_bytes
    print(f"without the plan: batch {plain} ({memory.format_bytes(plain_bytes)})")

    n = plain * args.factor
    p = memory.plan(loss_of(LM()), params, tokens(n), budget, optimizer=optimizer,
                    policies=("none", "full"), micro_batches=(1, args.micro),
                    quantized=(False, True), loss_for_policy=loss_for_policy, progress=False)
    print(f"\nplan at batch {n} ({args.factor} x):")
    print(p)
    if p.best is None:
        print(f"no option fits batch {n}: try a smaller --factor")
        return
    o = p.best
    planned, tx = option_step(o, optimizer)
    q_state = jax.eval_shape(tx.init, params)
    largest = memory.fit_batch(lambda n: (planned, (params, q_state, tokens(n))), budget,
                               start=4 * o.micro_batches, multiple_of=4 * o.micro_batches,
                               progress=False)
    rows = [("without the plan", plain, "none", 1, False, step, optimizer),
            ("with the plan", largest, o.policy, o.micro_batches, o.quantized, planned, tx)]
    print(f"\n| | largest batch | policy on the blocks | micro-batches | 8-bit state "
          f"| compiled bytes | fits {memory.format_bytes(budget)} | step s (min of 2) |")
    print("|---|---:|---|---:|---|---:|---|---:|")
    real = LM().init(jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32))
    for label, n, policy, k, q, s, t in rows:
        check = memory.report(s, params, jax.eval_shape(t.init, params), tokens(n),
                              residuals=False).total_bytes
        batch = jax.random.randint(jax.random.key(1), (n, SEQ + 1), 0, VOCAB)
        seconds = timed(s, real, t.init(real), batch)
        print(f"| {label} | {n} | {policy} | {k} | {'yes' if q else 'no'} | "
              f"{memory.format_bytes(check)} | {'yes' if check <= budget else 'no'} | "
              f"{seconds:.2f} |")
    print(f"({load()})")


if __name__ == "__main__":
    main()
