"""Models the memory tests run on: a Linen conv + BatchNorm block, a scanned Linen
Transformer, and an NNX Transformer whose blocks run under ``nnx.scan``."""

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx
from jax.ad_checkpoint import checkpoint_name


class ResBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool = True):
        h = nn.Conv(self.features, (3, 3), use_bias=False)(x)
        h = nn.BatchNorm(use_running_average=not train)(h)
        h = checkpoint_name(nn.relu(h), "conv_out")
        h = nn.Conv(self.features, (3, 3), use_bias=False)(h)
        h = nn.BatchNorm(use_running_average=not train)(h)
        return nn.relu(x + h)


class ResNet(nn.Module):
    features: int = 8
    blocks: int = 2

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(self.features, (3, 3))(x)
        for _ in range(self.blocks):
            x = ResBlock(self.features)(x, train)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


class Block(nn.Module):
    """A pre-norm Transformer block with multi-head attention (head axes in the kernels)."""

    d: int = 16
    heads: int = 2

    @nn.compact
    def __call__(self, x, _):
        h = nn.LayerNorm()(x)
        h = nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, h)
        x = x + h
        h = nn.LayerNorm()(x)
        h = checkpoint_name(nn.gelu(nn.Dense(4 * self.d)(h)), "mlp_hidden")
        return x + nn.Dense(self.d)(h), None


class ScannedLM(nn.Module):
    vocab: int = 32
    d: int = 16
    layers: int = 3

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab, self.d)(tokens)
        stack = nn.scan(
            Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = stack(self.d, name="layers")(x, None)
        return nn.Dense(self.vocab)(nn.LayerNorm()(x))


class NNXBlock(nnx.Module):
    def __init__(self, d, heads, rngs):
        self.norm1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, rngs=rngs)
        self.up = nnx.Linear(d, 4 * d, rngs=rngs)
        self.down = nnx.Linear(4 * d, d, rngs=rngs)

    def __call__(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h)
        h = checkpoint_name(nnx.gelu(self.up(self.norm2(x))), "mlp_hidden")
        return x + self.down(h)


class NNXLM(nnx.Module):
    def __init__(self, vocab=32, d=16, heads=2, layers=3, *, rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)

        @nnx.vmap(in_axes=0, out_axes=0)
        def make(key):
            return NNXBlock(d, heads, nnx.Rngs(key))

        self.layers = make(jax.random.split(rngs.params(), layers))
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(x, block):
            return block(x)

        return self.head(run(x, self.layers))


def lm_loss(logits, tokens):
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]),
                                         tokens[:, 1:, None], axis=-1))
