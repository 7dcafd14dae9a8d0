"""Small versions of today's architectures, written for the tests (not copied).

Each builder returns a parameter tree as users hold it; the shapes are small
so that tests stay fast, but the layouts are the real ones: HWIO convs with
BatchNorm, attention kernels with head axes, layers stacked by ``nn.scan`` /
``nnx.vmap`` with partition metadata, Equinox ``(out, in)`` and OIHW weights,
a ViT with a cls token and position embeddings.
"""

from __future__ import annotations

import functools

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

LAYERS, EMBED, HEADS, MLP = 3, 8, 2, 16


class ResNetBlock(nn.Module):
    """A ResNet basic block with a projection shortcut, then a classifier head."""

    features: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.Conv(self.features, (3, 3), use_bias=False)(x)
        y = nn.BatchNorm(use_running_average=not train)(y)
        y = nn.relu(y)
        y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
        y = nn.BatchNorm(use_running_average=not train, scale_init=nn.initializers.zeros)(y)
        r = nn.Conv(self.features, (1, 1), name="conv_proj")(x)
        r = nn.BatchNorm(use_running_average=not train, name="norm_proj")(r)
        y = nn.relu(y + r)
        return nn.Dense(10)(jnp.mean(y, axis=(1, 2)))


def _init(module, x, abstract):
    init = functools.partial(module.init, jax.random.key(0))
    return jax.eval_shape(init, x) if abstract else jax.jit(init)(x)


@functools.cache
def resnet_variables(abstract: bool = False):
    """``{"params": ..., "batch_stats": ...}``; ``abstract``: ``ShapeDtypeStruct`` leaves."""
    return _init(ResNetBlock(), jnp.ones((1, 8, 8, 4)), abstract)


def _part(init, names):
    return nn.with_partitioning(init, names)


class LinenBlock(nn.Module):
    """A pre-norm Transformer block with partition names on its weights."""

    @nn.compact
    def __call__(self, x, _):
        lecun = nn.initializers.lecun_normal()
        y = nn.LayerNorm(scale_init=_part(nn.initializers.ones, ("embed",)))(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=HEADS, kernel_init=_part(lecun, ("embed", "heads", "kv"))
        )(y, y)
        x = x + y
        y = nn.LayerNorm()(x)
        y = nn.Dense(MLP, kernel_init=_part(lecun, ("embed", "mlp")))(y)
        y = nn.Dense(EMBED, kernel_init=nn.with_logical_partitioning(lecun, ("mlp", "embed")))(
            nn.gelu(y)
        )
        return x + y, None


class LinenStack(nn.Module):
    """``LAYERS`` blocks under ``nn.scan``, the stacked axis named ``"layers"``."""

    @nn.compact
    def __call__(self, x):
        scanned = nn.scan(
            LinenBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=LAYERS,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = scanned(name="layers")(x, None)
        return nn.Dense(4, name="head")(x)


@functools.cache
def linen_stack_params(abstract: bool = False):
    """Boxed params (``nn.Partitioned`` leaves), as ``init`` returns them."""
    return _init(LinenStack(), jnp.ones((1, 5, EMBED)), abstract)["params"]


class NNXBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        lecun = nnx.initializers.lecun_normal()
        self.attn = nnx.MultiHeadAttention(
            num_heads=HEADS,
            in_features=EMBED,
            decode=False,
            kernel_init=nnx.with_partitioning(lecun, ("embed", "heads", "kv")),
            rngs=rngs,
        )
        self.norm = nnx.LayerNorm(EMBED, rngs=rngs)
        self.up = nnx.Linear(
            EMBED, MLP, kernel_init=nnx.with_partitioning(lecun, ("embed", "mlp")), rngs=rngs
        )
        self.down = nnx.Linear(
            MLP, EMBED, kernel_init=nnx.with_partitioning(lecun, ("mlp", "embed")), rngs=rngs
        )

    def __call__(self, x):
        x = x + self.attn(self.norm(x))
        return x + self.down(nnx.gelu(self.up(x)))


def nnx_stack(abstract: bool = False):
    """``LAYERS`` NNX blocks made by ``nnx.vmap`` with the ``"layers"`` partition name."""

    @nnx.split_rngs(splits=LAYERS)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
        return NNXBlock(rngs)

    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: make(nnx.Rngs(0))) if abstract else make(nnx.Rngs(0))


def nnx_forward(stack, x):
    """Runs the stack with ``nnx.scan`` over its layers."""

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
              transform_metadata={nnx.PARTITION_NAME: "layers"})
    def body(x, block):
        return block(x)

    return body(x, stack)


def eqx_mlp(abstract: bool = False):
    make = functools.partial(eqx.nn.MLP, 4, 3, width_size=8, depth=2, key=jax.random.key(0))
    return eqx.filter_eval_shape(make) if abstract else make()


class EqxCNN(eqx.Module):
    conv1: eqx.nn.Conv2d
    norm: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    ln: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(3, 8, 3, key=k1)
        self.norm = eqx.nn.GroupNorm(2, 8)
        self.conv2 = eqx.nn.Conv2d(8, 8, 3, key=k2)
        self.ln = eqx.nn.LayerNorm(8)
        self.head = eqx.nn.Linear(8, 10, key=k3)

    def __call__(self, x):
        x = self.norm(jax.nn.relu(self.conv1(x)))
        x = jnp.mean(self.conv2(x), axis=(1, 2))
        return self.head(self.ln(x))


class EqxStacked(eqx.Module):
    """``LAYERS`` Equinox linears and layer norms stacked by ``filter_vmap`` (scan-over-layers)."""

    linears: eqx.nn.Linear
    norms: eqx.nn.LayerNorm

    def __init__(self, key):
        keys = jax.random.split(key, LAYERS)
        self.linears = eqx.filter_vmap(lambda k: eqx.nn.Linear(EMBED, MLP, key=k))(keys)
        self.norms = eqx.filter_vmap(lambda k: eqx.nn.LayerNorm(EMBED))(keys)


class AddPositionEmbs(nn.Module):
    @nn.compact
    def __call__(self, x):
        pe = self.param("pos_embedding", nn.initializers.normal(0.02), (1, *x.shape[1:]))
        return x + pe


class ViT(nn.Module):
    """Patch embedding (a strided conv named ``embedding``), cls token, one attention block."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(16, (4, 4), strides=(4, 4), padding="VALID", name="embedding")(x)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
        x = jnp.concatenate([jnp.tile(cls, (b, 1, 1)), x], axis=1)
        x = AddPositionEmbs(name="posembed_input")(x)
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS)(y, y)
        return nn.Dense(10, name="head")(x[:, 0])


@functools.cache
def vit_params(abstract: bool = False):
    return _init(ViT(), jnp.ones((1, 8, 8, 3)), abstract)["params"]
