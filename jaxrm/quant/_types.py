"""Quantized leaves: ``QArray`` (uniform integers) and ``Codebook`` (shared weights).

Both are registered pytree dataclasses: their arrays are children, so they pass
through ``jax.jit``, ``jax.tree.map``, optax and orbax like any other state,
while their configuration (bits, axis, original dtype) is static metadata.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["Codebook", "QArray", "dequantize", "is_quantized"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QArray:
    """A uniformly quantized array: ``x ≈ (values - zero_point) * scale``.

    Attributes:
      values: integer array of the original shape (int8/uint8; int16/uint16
        above 8 bits; 4-bit values are stored one per int8).
      scale: float array broadcastable to ``values`` (shape ``()`` per tensor,
        the values' rank with size 1 off ``axis`` per channel).
      zero_point: float array of ``scale``'s shape holding integral values
        (0 for symmetric quantization).
      bits: number of bits of the integer grid (static).
      axis: the per-channel axis, or ``None`` per tensor (static).
      dtype: name of the original floating dtype (static).
      group_size: ``None``, or the entries per scale on the one grouped axis
        (where ``scale`` has ``n // group_size`` entries, GPTQ's groups; static).
    """

    values: jax.Array
    scale: jax.Array
    zero_point: jax.Array
    bits: int = dataclasses.field(default=8, metadata={"static": True})
    axis: int | None = dataclasses.field(default=None, metadata={"static": True})
    dtype: str = dataclasses.field(default="float32", metadata={"static": True})
    group_size: int | None = dataclasses.field(default=None, metadata={"static": True})

    replace = dataclasses.replace

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def dequantize(self) -> jax.Array:
        """Returns ``(values - zero_point) * scale`` in the original dtype.

        A ``scale`` axis of size ``k`` that divides the values' size ``n`` on
        that axis (``1 < k < n``) holds group-wise parameters: each entry
        covers ``n // k`` consecutive values (GPTQ's group size).
        """
        shape = self.values.shape
        zp, scale = _groups(self.zero_point, shape), _groups(self.scale, shape)
        x = (self.values.astype(jnp.float32) - zp) * scale
        return x.astype(self.dtype)


def _groups(p: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Repeats group-wise parameters so that they broadcast against ``shape``."""
    p = jnp.asarray(p)
    if p.ndim == len(shape):
        for a, (k, n) in enumerate(zip(p.shape, shape)):
            if 1 < k < n and n % k == 0:
                p = jnp.repeat(p, n // k, axis=a)
    return p


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Codebook:
    """Weight sharing: each entry is one of a few shared ``centroids``.

    ``dequantize()`` is ``where(mask, centroids[indices], 0)``. Differentiating
    through it gives each centroid the sum of its members' gradients (the
    transpose of the gather), which is Deep Compression's centroid fine-tuning.

    Attributes:
      indices: unsigned integer array of the original shape (uint8; uint16
        above 8 bits) indexing ``centroids``.
      centroids: float array of shape ``(k,)``.
      mask: ``None`` for a dense leaf, else a ``bool`` array of the original
        shape, ``False`` where the entry is pruned: such entries decode to
        exactly 0 and belong to no cluster (their index is 0 and ignored).
      bits: bits per index, ``k <= 2**bits`` (static).
      dtype: name of the original floating dtype (static).
    """

    indices: jax.Array
    centroids: jax.Array
    mask: jax.Array | None = None
    bits: int = dataclasses.field(default=8, metadata={"static": True})
    dtype: str = dataclasses.field(default="float32", metadata={"static": True})

    replace = dataclasses.replace

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.indices.shape)

    def dequantize(self) -> jax.Array:
        """Returns ``centroids[indices]`` (0 where pruned) in the original dtype."""
        x = jnp.take(self.centroids, self.indices.astype(jnp.int32), axis=0)
        if self.mask is not None:
            x = jnp.where(self.mask, x, jnp.zeros((), x.dtype))
        return x.astype(self.dtype)


def is_quantized(x: Any) -> bool:
    """True for ``QArray`` and ``Codebook`` leaves.

    Args:
      x: any object (typically a pytree node, e.g. as ``is_leaf`` of ``jax.tree.map``).

    Returns:
      Whether ``x`` is a quantized leaf.
    """
    return isinstance(x, QArray | Codebook)


def dequantize(tree: Any) -> Any:
    """Returns ``tree`` with every quantized leaf turned back into a float array.

    Each ``QArray``/``Codebook`` becomes an array of its original shape and
    dtype; other leaves are returned unchanged. Works under ``jit`` and ``grad``.

    Args:
      tree: a pytree, possibly holding ``QArray``/``Codebook`` leaves.

    Returns:
      A pytree of the same structure with only array (and other) leaves.
    """
    return jax.tree.map(
        lambda x: x.dequantize() if is_quantized(x) else x, tree, is_leaf=is_quantized
    )
