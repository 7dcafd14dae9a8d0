"""Builders of quantized trees for the coding tests (by hand, no quant functions)."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxrm.quant._types import Codebook, QArray

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def lloyd_codebook(w, bits, mask=None, iters=5):
    """A tiny 1-D k-means (linear init) over the kept entries of ``w``."""
    k = 2**bits
    kept = w[mask] if mask is not None else w.reshape(-1)
    lo, hi = (kept.min(), kept.max()) if kept.size else (-1.0, 1.0)
    cent = np.linspace(lo, hi, k)
    for _ in range(iters):
        idx = np.abs(kept[:, None] - cent[None]).argmin(1)
        for j in range(k):
            if np.any(idx == j):
                cent[j] = kept[idx == j].mean()
    idx = np.abs(w.reshape(-1)[:, None] - cent[None]).argmin(1).reshape(w.shape)
    if mask is not None:
        idx = np.where(mask, idx, 0)
    return idx.astype(np.uint8 if bits <= 8 else np.uint16), cent


def make_leaf(rng, kind, shape, density, bits, dtype):
    """Returns (leaf, mask for ``masks`` or None)."""
    w = rng.normal(size=shape)
    mask = rng.random(shape) < density
    if kind == "dense":
        return jnp.asarray(w.astype(DTYPES[dtype])), None
    if kind == "masked":
        return jnp.asarray(w.astype(DTYPES[dtype])), mask
    if kind == "int":
        return np.asarray(rng.integers(-5, 5, shape), np.int32), None
    if kind in ("codebook", "codebook-arg"):
        idx, cent = lloyd_codebook(w, bits, mask)
        own = jnp.asarray(mask) if kind == "codebook" else None
        cb = Codebook(
            jnp.asarray(idx), jnp.asarray(cent.astype(np.float32)), own, bits=bits, dtype=dtype
        )
        return cb, (jnp.asarray(mask) if kind == "codebook-arg" else None)
    if kind in ("qarray", "qarray-masked", "qarray-channel"):
        top = 2 ** (bits - 1) - 1
        if kind == "qarray-channel" and len(shape) >= 1:
            s = np.abs(w).max(axis=tuple(range(1, len(shape))), keepdims=True, initial=0.0)
            s = s / max(top, 1)
            s = np.where(s > 0, s, 1.0).astype(np.float32)
            axis = 0
        else:
            s = np.float32(max(np.abs(w).max(initial=0.0), 1e-3) / max(top, 1))
            axis = None
        vals = np.clip(np.round(w / s), -top - 1, top).astype(np.int8 if bits <= 8 else np.int16)
        zp = np.zeros_like(np.asarray(s), np.float32)
        qa = QArray(jnp.asarray(vals), jnp.asarray(s), jnp.asarray(zp), bits=bits, axis=axis,
                    dtype=dtype)
        return qa, (jnp.asarray(mask) if kind == "qarray-masked" else None)
    raise ValueError(kind)


@pytest.fixture
def small_tree():
    rng = np.random.default_rng(0)
    cb, _ = make_leaf(rng, "codebook", (6, 5), 0.3, 3, "float32")
    qa, qmask = make_leaf(rng, "qarray-masked", (4, 4), 0.5, 4, "bfloat16")
    w, wmask = make_leaf(rng, "masked", (3, 7), 0.4, 0, "float16")
    tree = {"conv": {"kernel": cb, "bias": jnp.arange(3.0)}, "q": qa, "w": w}
    masks = {"conv": {"kernel": None, "bias": None}, "q": qmask, "w": wmask}
    return tree, masks


def normal_symbols(seed, n, alphabet, spread):
    """``n`` symbols of ``range(alphabet)``: a rounded, clipped normal (k-means-index-like)."""
    rng = np.random.default_rng(seed)
    sym = np.clip(np.round(rng.normal(alphabet / 2, spread * alphabet / 4, n)), 0, alphabet - 1)
    return sym.astype(np.int64)
