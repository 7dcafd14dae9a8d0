"""Reading ``.jrm`` files: symbol streams, sparse positions, and numpy dequantization.

Everything here runs on numpy: dequantizing a leaf is a gather or two
elementwise operations in the dtypes JAX would use, so decoding compiles
nothing, whatever the number and shapes of the leaves. Only the finished
arrays are handed to JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm.coding import _records as mf
from jaxrm.coding import _sparse, _streams
from jaxrm.coding._bits import FormatError
from jaxrm.coding._int4 import pack_int4
from jaxrm.coding._manifest import parse
from jaxrm.quant._types import Codebook, QArray, is_quantized
from jaxrm.tree import path_str

__all__ = ["Reader", "decode"]

_QARRAY_FIELDS = {f.name for f in dataclasses.fields(QArray)}
QARRAY_HAS_MASK = "mask" in _QARRAY_FIELDS


@dataclasses.dataclass(frozen=True)
class Parts:
    """A leaf's stored entries: flat positions (``None`` when dense) and their values."""

    positions: np.ndarray | None
    values: np.ndarray  # symbols (quantized leaves) or raw values (sparse leaves)


class Reader:
    """Decodes the streams of a parsed file, each shared stream once."""

    def __init__(self, m: mf.Manifest):
        self.m = m
        self._decoded: dict[int, np.ndarray] = {}
        self._left = [0] * len(m.streams)
        for leaf in m.leaves:
            for run in _runs(leaf):
                self._left[run.stream] += 1

    def symbols(self, run: mf.Run, what: str) -> np.ndarray:
        if isinstance(run, mf.Pieces):
            return np.concatenate([self.symbols(r, what) for r in run.runs])
        j = run.stream
        if j not in self._decoded:
            s = self.m.streams[j]
            meta = {"codec": s.codec, "count": s.count, "alphabet": s.alphabet}
            self._decoded[j] = _streams.decode(self.m.sections[s.section], meta)
        sym = self._decoded[j][run.start : run.start + run.count]
        self._left[j] -= 1
        if not self._left[j]:
            del self._decoded[j]
        if run.count and int(sym.max()) >= run.alphabet:
            raise FormatError(f"{what}: symbols fall outside their alphabet")
        return sym

    def parts(self, leaf: mf.Leaf) -> Parts:
        """Decodes and checks a leaf's streams (everything but building the output)."""
        what = f"leaf {leaf.path[:200]!r}"
        if isinstance(leaf, mf.RawLeaf):
            return Parts(None, self.m.raw(leaf.data))
        sp = leaf.sparse
        pos = None
        if sp is not None:
            codes = self.symbols(sp.index, f"{what} index")
            pos = _sparse.positions(codes, leaf.size)
        if isinstance(leaf, mf.SparseLeaf):
            values = self.m.raw(leaf.values)
            # fillers have the top code and hold +0: every other entry is a kept one
            top = (1 << sp.index_bits) - 1
            bits = values.view(f"u{values.dtype.itemsize}") if values.dtype.itemsize else values
            surely_kept = int(np.count_nonzero((codes != top) | (bits != 0)))
            if surely_kept > sp.kept:
                raise FormatError(f"{what}: more kept entries than the record says")
            return Parts(pos, values)
        sym = self.symbols(leaf.values, f"{what} values")
        if leaf.filler is not None:
            if sp is None or pos is None:  # the parser refuses this; said for the type checker
                raise FormatError(f"{what}: a filler symbol without relative indices")
            real = sym != leaf.filler
            if np.any(~real & (codes != (1 << sp.index_bits) - 1)):
                raise FormatError(f"{what}: a filler symbol stands at a kept entry's index")
            pos, sym = pos[real], sym[real]
        if sp is not None and pos is not None and len(pos) != sp.kept:
            raise FormatError(f"{what}: kept count disagrees with the entries")
        return Parts(pos, sym)


def _runs(leaf: mf.Leaf) -> list[mf.Symbols]:
    sp = getattr(leaf, "sparse", None)
    out = [] if sp is None else list(mf.pieces_of(sp.index))
    values = getattr(leaf, "values", None)
    if isinstance(values, mf.Symbols | mf.Pieces):
        out.extend(mf.pieces_of(values))
    return out


def _scatter(size: int, dtype: np.dtype, pos: np.ndarray | None, values: np.ndarray):
    if pos is None:
        return values.astype(dtype, copy=False)
    out = np.zeros(size, dtype)
    out[pos] = values
    return out


def _mask(size: int, pos: np.ndarray | None) -> np.ndarray | None:
    if pos is None:
        return None
    mask = np.zeros(size, bool)
    mask[pos] = True
    return mask


def _jax_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _dequantize_qarray(vals: np.ndarray, scale: np.ndarray, zp: np.ndarray, dtype) -> np.ndarray:
    """``QArray.dequantize`` in numpy: the same operations in the dtypes JAX promotes to."""
    t1 = np.dtype(jnp.promote_types(np.float32, _jax_dtype(zp.dtype)))
    t2 = np.dtype(jnp.promote_types(t1, _jax_dtype(scale.dtype)))
    x = vals.astype(np.float32).astype(t1, copy=False)
    x -= zp.astype(_jax_dtype(zp.dtype)).astype(t1)
    x = x.astype(t2, copy=False)
    x *= scale.astype(_jax_dtype(scale.dtype)).astype(t2)
    return x.astype(dtype, copy=False)


def _expand_groups(s: np.ndarray, shape: tuple[int, ...], group_size: int | None) -> np.ndarray:
    """A group-wise scale repeated to full size on its grouped axes (as ``QArray`` does)."""
    if group_size is None:
        return s
    s = s.reshape((1,) * (len(shape) - s.ndim) + s.shape)
    for d, (m, n) in enumerate(zip(s.shape, shape)):
        if m not in (1, n):
            s = np.take(np.repeat(s, group_size, axis=d), np.arange(n), axis=d)
    return s


def _codebook(m: mf.Manifest, leaf: mf.CodebookLeaf, p: Parts, dequantize: bool) -> Any:
    centroids = m.raw(leaf.centroids)
    if not dequantize:
        idx = _scatter(leaf.size, leaf.index_dtype, p.positions, p.values).reshape(leaf.shape)
        mask = _mask(leaf.size, p.positions)
        return Codebook(
            indices=jax.device_put(idx),
            centroids=jax.device_put(centroids),
            mask=None if mask is None else jax.device_put(mask.reshape(leaf.shape)),
            bits=leaf.bits,
            dtype=leaf.dtype.name,
        )
    table = centroids.astype(_jax_dtype(centroids.dtype)).astype(leaf.dtype)
    if table.ndim == 1:
        return _scatter(leaf.size, leaf.dtype, p.positions, table[p.values]).reshape(leaf.shape)
    # one codebook per stacked slice: gather along the last axis, broadcast over the rest
    idx = _scatter(leaf.size, np.intp, p.positions, p.values).reshape((*leaf.shape, 1))
    x = np.take_along_axis(table, idx, axis=-1)[..., 0]
    if p.positions is not None:
        x = _scatter(leaf.size, leaf.dtype, p.positions, x.reshape(-1)[p.positions])
    return x.reshape(leaf.shape)


def _stored_qarray(leaf: mf.QArrayLeaf, vals, scale, zp, mask) -> QArray:
    """The ``QArray`` as it was encoded: packed, grouped and masked as the file says."""
    fields: dict[str, Any] = {}
    if leaf.packed and "packed" in _QARRAY_FIELDS:
        vals = pack_int4(vals)
        fields["packed"] = True
    if leaf.group_size is not None and "group_size" in _QARRAY_FIELDS:
        fields["group_size"] = leaf.group_size
    if mask is not None:
        fields["mask"] = jax.device_put(mask.reshape(leaf.shape))
    return QArray(
        values=jax.device_put(vals),
        scale=jax.device_put(scale),
        zero_point=jax.device_put(zp),
        bits=leaf.bits,
        axis=leaf.axis,
        dtype=leaf.dtype.name,
        **fields,
    )


def _qarray(m: mf.Manifest, leaf: mf.QArrayLeaf, p: Parts, dequantize: bool) -> Any:
    vals = (p.values.astype(np.int64) + leaf.offset).astype(leaf.values_dtype)
    vals = _scatter(leaf.size, leaf.values_dtype, p.positions, vals).reshape(leaf.shape)
    scale, zp = m.raw(leaf.scale), m.raw(leaf.zero_point)
    if not dequantize:
        return _stored_qarray(leaf, vals, scale, zp, _mask(leaf.size, p.positions))
    scale = _expand_groups(scale, leaf.shape, leaf.group_size)
    zp = _expand_groups(zp, leaf.shape, leaf.group_size)
    x = _dequantize_qarray(vals, scale, zp, leaf.dtype).reshape(-1)
    if p.positions is not None:
        x = _scatter(leaf.size, leaf.dtype, p.positions, x[p.positions])
    return x.reshape(leaf.shape)


def decode_leaf(reader: Reader, leaf: mf.Leaf, dequantize: bool) -> Any:
    p = reader.parts(leaf)
    if isinstance(leaf, mf.RawLeaf):
        return p.values
    if isinstance(leaf, mf.SparseLeaf):
        return _scatter(leaf.size, leaf.dtype, p.positions, p.values).reshape(leaf.shape)
    if isinstance(leaf, mf.CodebookLeaf):
        return _codebook(reader.m, leaf, p, dequantize)
    return _qarray(reader.m, leaf, p, dequantize)


# Decoded arrays are put on the device in batches of at most this many bytes.
_BATCH_BYTES = 1 << 26


def _decode_all(reader: Reader, leaves: tuple[mf.Leaf, ...], dequantize: bool) -> list[Any]:
    """Every leaf decoded, as JAX arrays put on the device a batch at a time.

    One ``jax.device_put`` of a list costs about half of one call per array
    (JAX's own per-call overhead dominates small leaves); batches of at most
    ``_BATCH_BYTES`` keep the host copies awaiting their transfer small.
    """
    out: list[Any] = []
    todo: list[int] = []
    pending = 0

    def flush() -> None:
        for i, x in zip(todo, jax.device_put([out[i] for i in todo])):
            out[i] = x
        todo.clear()

    for leaf in leaves:
        x = decode_leaf(reader, leaf, dequantize)
        out.append(x)
        if is_quantized(x) or isinstance(x, jax.Array):
            continue
        if jax.dtypes.canonicalize_dtype(x.dtype) != x.dtype:
            continue  # e.g. float64 without jax_enable_x64: stays numpy
        todo.append(len(out) - 1)
        pending += x.nbytes
        if pending >= _BATCH_BYTES:
            flush()
            pending = 0
    flush()
    return out


def _nest(items: list[tuple[str, Any]]) -> Any:
    if len(items) == 1 and items[0][0] == "":
        return items[0][1]
    root: dict = {}
    for path, value in items:
        node = root
        parts = path.split("/")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise FormatError(f"path {path[:200]!r} runs through a leaf")
            node = child
        if parts[-1] in node:
            raise FormatError(f"path {path[:200]!r} repeats or contains another leaf")
        node[parts[-1]] = value
    return root


def decode(
    data: bytes | bytearray | memoryview,
    like: Any = None,
    *,
    dequantize: bool = True,
    max_elements: int = mf.DEFAULT_MAX_ELEMENTS,
) -> Any:
    """Decodes ``.jrm`` bytes back into arrays (or into the compressed tree).

    With ``dequantize=True`` every quantized leaf comes back as exactly what
    ``quant.dequantize`` gives for the leaf that was encoded (bitwise), with
    masked-out entries exactly ``+0.0``; every other leaf as it was stored.
    Arrays are ``jax.Array`` unless their dtype needs ``jax_enable_x64`` (then
    ``numpy`` arrays). Dequantization runs in numpy, so nothing is compiled.

    Untrusted files are safe to decode: the whole manifest is checked before
    anything is allocated, the file may declare at most ``max_elements``
    decoded elements, and the memory used is a small multiple of the decoded
    output plus the file (see the Security section of the coding docs).

    Args:
      data: the bytes of a ``.jrm`` file.
      like: ``None`` to get a nested dict keyed by the path segments (the bare
        array for a single root leaf), or a pytree (Linen params, an
        ``nnx.State``, lists, ...) whose structure and paths the result takes.
      dequantize: ``False`` returns ``quant.Codebook`` / ``quant.QArray``
        leaves as stored (with their masks: ``Codebook.mask``, and
        ``QArray.mask`` where ``QArray`` has that field), e.g. to fine-tune
        or run the model compressed.
      max_elements: the most decoded elements (summed over leaves, each leaf
        counting 64 more) the file may declare; default ``2**30``. Raise it
        to read a larger model you trust.

    Returns:
      The decoded tree.

    Raises:
      FormatError: ``data`` is not a well-formed ``.jrm`` file (also for
        corruption, truncation, trailing bytes, or more than ``max_elements``).
      TypeError: ``data`` is not bytes.
      ValueError: ``like``'s leaf paths differ from the file's.
    """
    m = parse(data, max_elements=max_elements)
    if not dequantize and not QARRAY_HAS_MASK:
        pruned = [e.path for e in m.leaves if isinstance(e, mf.QArrayLeaf) and e.sparse]
        if pruned:
            raise ValueError(
                f"leaf {pruned[0]!r} is a pruned QArray, and this jaxrm's QArray has no "
                "mask field: decode it with dequantize=True"
            )
    try:
        reader = Reader(m)
        values = _decode_all(reader, m.leaves, dequantize)
        items = [(e.path, x) for e, x in zip(m.leaves, values)]
        if like is None:
            return _nest(items)
    except (FormatError, MemoryError):
        raise
    except Exception as e:
        raise FormatError(f"malformed .jrm data: {type(e).__name__}: {e}"[:500]) from e
    flat, treedef = jax.tree_util.tree_flatten_with_path(like, is_leaf=is_quantized)
    found = dict(items)
    want = [path_str(kp) for kp, _ in flat]
    missing = [q for q in want if q not in found]
    extra = sorted(set(found) - set(want))
    if missing or extra:
        raise ValueError(
            f"like does not match the file: missing in the file {missing[:5]}, "
            f"not in like {extra[:5]}"
        )
    return jax.tree_util.tree_unflatten(treedef, [found[q] for q in want])
