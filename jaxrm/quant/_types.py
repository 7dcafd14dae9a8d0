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


def unpack_int4(packed: jax.Array, signed: bool) -> jax.Array:
    """Unpacks two 4-bit entries per byte along the last axis (low nibble first).

    ``packed`` of shape ``(..., n // 2)`` (int8 if ``signed`` else uint8) gives
    an int8/uint8 array of shape ``(..., n)``: entry ``2j`` is the low nibble of
    byte ``j``, entry ``2j + 1`` its high nibble (sign-extended when ``signed``).
    """
    if signed:
        p = packed.astype(jnp.int8)
        low = jnp.right_shift(jnp.left_shift(p, jnp.int8(4)), jnp.int8(4))
        high = jnp.right_shift(p, jnp.int8(4))
    else:
        p = packed.astype(jnp.uint8)
        low = jnp.bitwise_and(p, jnp.uint8(15))
        high = jnp.right_shift(p, jnp.uint8(4))
    return jnp.stack([low, high], axis=-1).reshape(*p.shape[:-1], 2 * p.shape[-1])


def pack_int4(values: jax.Array) -> jax.Array:
    """Inverse of ``unpack_int4``: packs an even last axis two entries per byte."""
    signed = jnp.issubdtype(values.dtype, jnp.signedinteger)
    v = values.reshape(*values.shape[:-1], values.shape[-1] // 2, 2)
    if signed:
        v = v.astype(jnp.int8)
        low = jnp.bitwise_and(v[..., 0], jnp.int8(15))
        return jnp.bitwise_or(low, jnp.left_shift(v[..., 1], jnp.int8(4)))
    v = v.astype(jnp.uint8)
    return jnp.bitwise_or(v[..., 0], jnp.left_shift(v[..., 1], jnp.uint8(4)))


def expand_groups(s: jax.Array, shape: tuple[int, ...], group_size: int | None) -> jax.Array:
    """Broadcasts a group-wise ``scale``/``zero_point`` to ``shape``.

    An axis where ``s`` has neither size 1 nor the full size holds one entry
    per group of ``group_size`` consecutive entries (the last group may be
    shorter); it is repeated ``group_size`` times and cut to the full size.
    """
    if group_size is None:
        return s
    for d, (m, n) in enumerate(zip(s.shape, shape)):
        if m not in (1, n):
            s = jnp.repeat(s, group_size, axis=d, total_repeat_length=m * group_size)
            s = jax.lax.slice_in_dim(s, 0, n, axis=d)
    return s


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QArray:
    """A uniformly quantized array: ``x ≈ (values - zero_point) * scale``.

    Attributes:
      values: integer array. Unpacked (``packed=False``): the original shape,
        int8/uint8 up to 8 bits (int16/uint16 above). Packed (``packed=True``,
        only for ``bits <= 4`` and an even last axis): shape
        ``(*shape[:-1], shape[-1] // 2)``, two entries per byte along the last
        axis, entry ``2j`` in the low nibble of byte ``j`` (int8 two's
        complement nibbles when symmetric, uint8 when asymmetric). The packed
        bytes are what device memory holds: a jitted function taking a packed
        ``QArray`` takes half a byte per entry.
      scale: float32 array with the values' rank (``(1,) * ndim`` per tensor;
        the size of ``axis`` on the per-channel axis, 1 elsewhere; the number
        of slices on stacked axes; ``ceil(n / group_size)`` on the group axis).
      zero_point: float array of ``scale``'s shape holding integral values
        (0 for symmetric quantization).
      mask: ``None`` for a dense leaf, else a ``bool`` array of the original
        shape, ``False`` where the entry is pruned: such entries decode to
        exactly 0 (their value is 0 and ignored).
      bits: number of bits of the integer grid (static).
      axis: the per-channel axis, or ``None`` (static).
      dtype: name of the original floating dtype (static).
      packed: whether ``values`` holds two 4-bit entries per byte (static).
      group_size: entries per scale along the group axis (the contraction
        axis, e.g. 128 input features per scale), or ``None`` (static). The
        group axis is the one where ``scale`` has neither size 1 nor the full
        size.
    """

    values: jax.Array
    scale: jax.Array
    zero_point: jax.Array
    mask: jax.Array | None = None
    bits: int = dataclasses.field(default=8, metadata={"static": True})
    axis: int | None = dataclasses.field(default=None, metadata={"static": True})
    dtype: str = dataclasses.field(default="float32", metadata={"static": True})
    packed: bool = dataclasses.field(default=False, metadata={"static": True})
    group_size: int | None = dataclasses.field(default=None, metadata={"static": True})

    replace = dataclasses.replace

    @property
    def shape(self) -> tuple[int, ...]:
        """The original (unpacked) shape."""
        shape = tuple(self.values.shape)
        if self.packed:
            return (*shape[:-1], 2 * shape[-1])
        return shape

    @property
    def symmetric(self) -> bool:
        return bool(jnp.issubdtype(self.values.dtype, jnp.signedinteger))

    def integers(self) -> jax.Array:
        """The integer grid values in the original shape (unpacked if packed)."""
        if self.packed:
            return unpack_int4(self.values, self.symmetric)
        return self.values

    def dequantize(self) -> jax.Array:
        """Returns ``(values - zero_point) * scale`` (0 where masked) in the original dtype."""
        shape = self.shape
        scale = expand_groups(self.scale, shape, self.group_size)
        zero_point = expand_groups(self.zero_point, shape, self.group_size)
        x = (self.integers().astype(jnp.float32) - zero_point) * scale
        if self.mask is not None:
            x = jnp.where(self.mask, x, jnp.zeros((), x.dtype))
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
      centroids: float array of shape ``(k,)`` (one codebook), or per stacked
        slice the indices' rank plus one: the slices' sizes on the stacked
        axes, 1 elsewhere, and ``k`` last (so slicing a stacked axis, as
        ``nn.scan`` does, slices the codebooks with the indices).
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
        x = lookup(self.centroids, self.indices)
        if self.mask is not None:
            x = jnp.where(self.mask, x, jnp.zeros((), x.dtype))
        return x.astype(self.dtype)


def lookup(centroids: jax.Array, indices: jax.Array) -> jax.Array:
    """``centroids[indices]`` for one codebook ``(k,)`` or per-slice codebooks."""
    idx = indices.astype(jnp.int32)
    if centroids.ndim == 1:
        return jnp.take(centroids, idx, axis=0)
    # take_along_axis broadcasts the codebooks over the non-stacked axes.
    return jnp.take_along_axis(centroids, idx[..., None], axis=-1)[..., 0]


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
