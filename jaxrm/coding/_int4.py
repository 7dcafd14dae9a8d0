"""Two 4-bit integers per byte, as ``quant.QArray(packed=True)`` holds them in memory.

Files store the unpacked integers (the entropy coder sees the grid values);
the packing is restored when a file is read back into its compressed form.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pack_int4", "unpack_int4"]


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """Two 4-bit entries per byte along the last axis, low nibble first (sign-extended
    for int8), as ``quant.QArray`` packs them."""
    if packed.dtype == np.int8:
        low = np.right_shift(np.left_shift(packed, 4), 4)
        high = np.right_shift(packed, 4)
    else:
        low, high = packed & 15, packed >> 4
    return np.stack([low, high], axis=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Inverse of ``unpack_int4`` (an even last axis)."""
    v = values.reshape(*values.shape[:-1], values.shape[-1] // 2, 2).astype(np.uint8)
    out = (v[..., 0] & 15) | (v[..., 1] << 4)
    return out.view(np.int8) if values.dtype == np.int8 else out
