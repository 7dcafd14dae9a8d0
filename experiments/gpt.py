"""A small GPT-style decoder: pre-norm causal attention and MLP blocks under ``nn.scan``."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab: int
    d_model: int = 256
    heads: int = 4
    layers: int = 4
    context: int = 128
    mlp: int = 4


class Block(nn.Module):
    cfg: GPTConfig

    @nn.compact
    def __call__(self, x, _):
        c = self.cfg
        hd = c.d_model // c.heads
        h = nn.LayerNorm(name="ln1")(x)
        q, k, v = (
            nn.DenseGeneral((c.heads, hd), use_bias=False, name=n)(h) for n in ("q", "k", "v")
        )
        t = x.shape[1]
        a = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
        a = jnp.where(jnp.tril(jnp.ones((t, t), bool)), a, jnp.finfo(a.dtype).min)
        o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(a, axis=-1), v)
        x = x + nn.DenseGeneral(c.d_model, axis=(-2, -1), use_bias=False, name="o")(o)
        h = nn.LayerNorm(name="ln2")(x)
        h = nn.gelu(nn.Dense(c.mlp * c.d_model, name="up")(h))
        return x + nn.Dense(c.d_model, name="down")(h), None


class GPT(nn.Module):
    cfg: GPTConfig

    @nn.compact
    def __call__(self, tokens):
        c = self.cfg
        x = nn.Embed(c.vocab, c.d_model, name="embed")(tokens)
        x = (
            x
            + self.param("pos", nn.initializers.normal(0.02), (c.context, c.d_model))[
                : tokens.shape[1]
            ]
        )
        blocks = nn.scan(
            Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=c.layers
        )
        x, _ = blocks(c, name="blocks")(x, None)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(c.vocab, use_bias=False, name="head")(x)


def loss(model: GPT, params, tokens) -> jax.Array:
    """Mean next-token cross entropy (nats) of ``tokens`` ``(batch, context + 1)``."""
    logits = model.apply({"params": params}, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))
