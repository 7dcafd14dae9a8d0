"""Hand-built models for the structural pruning tests (Linen, NNX, Equinox)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    widths: Sequence[int] = (16, 8)
    out: int = 3

    @nn.compact
    def __call__(self, x):
        for w in self.widths:
            x = nn.relu(nn.Dense(w)(x))
        return nn.Dense(self.out)(x)


class ResNet(nn.Module):
    """Stem conv + BN, one residual block (two convs + BN), pooled Dense head."""

    stem: int = 8
    inner: int = 6
    classes: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda: nn.BatchNorm(use_running_average=not train)
        x = nn.relu(norm()(nn.Conv(self.stem, (3, 3), use_bias=False)(x)))
        y = nn.relu(norm()(nn.Conv(self.inner, (3, 3), use_bias=False)(x)))
        y = norm()(nn.Conv(self.stem, (3, 3), use_bias=False)(y))
        x = nn.relu(x + y)
        return nn.Dense(self.classes)(jnp.mean(x, axis=(1, 2)))


class Concat(nn.Module):
    a: int = 5
    b: int = 7

    @nn.compact
    def __call__(self, x):
        h = jnp.concatenate([nn.relu(nn.Dense(self.a)(x)), jnp.tanh(nn.Dense(self.b)(x))], -1)
        return nn.Dense(2)(h)


def _attend(q, k, v):
    w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / 2.0, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", w, v)


class Attention(nn.Module):
    """Separate q/k/v DenseGeneral kernels (emb, heads, dim), output (heads, dim, emb)."""

    heads: int = 4
    qk_dim: int = 3
    v_dim: int = 5

    @nn.compact
    def __call__(self, x):
        e = x.shape[-1]
        q = nn.DenseGeneral((self.heads, self.qk_dim), name="query")(x)
        k = nn.DenseGeneral((self.heads, self.qk_dim), name="key")(x)
        v = nn.DenseGeneral((self.heads, self.v_dim), name="value")(x)
        return nn.DenseGeneral(e, axis=(-2, -1), name="out")(_attend(q, k, v))


class FusedAttention(nn.Module):
    """One Dense for q, k and v, reshaped into (3, heads, dim); output from (heads * dim)."""

    heads: int = 4
    dim: int = 3

    @nn.compact
    def __call__(self, x):
        b, t, e = x.shape
        qkv = nn.Dense(3 * self.heads * self.dim, name="qkv")(x)
        qkv = qkv.reshape(b, t, 3, self.heads, self.dim)
        o = _attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        return nn.Dense(e, name="out")(o.reshape(b, t, self.heads * self.dim))


class Block(nn.Module):
    hidden: int = 12

    @nn.compact
    def __call__(self, x, _):
        h = nn.Dense(self.hidden)(nn.LayerNorm()(x))
        return x + nn.Dense(x.shape[-1])(nn.gelu(h)), None


class Scanned(nn.Module):
    """Residual MLP blocks stacked with ``nn.scan`` (params (layers, ...))."""

    hidden: int = 12
    layers: int = 3

    @nn.compact
    def __call__(self, x):
        stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                        length=self.layers)
        x, _ = stack(self.hidden, name="blocks")(x, None)
        return x


class Flattened(nn.Module):
    """Conv channels flattened together with space into a shape that mixes them."""

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Conv(6, (3, 3))(x))  # (b, 4, 4, 6)
        y = y.reshape(y.shape[0], 24, 4)
        return nn.Dense(2)(y)
