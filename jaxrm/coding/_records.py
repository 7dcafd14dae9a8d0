"""The records of a ``.jrm`` file: header constants, limits, and typed frozen records.

A parsed file is a ``Manifest`` of ``Leaf`` records (one class per
kind of leaf) that refer to ``Raw`` arrays in sections and to
``Symbols`` runs of coded ``Stream`` s. The checks shared by the
writer and the parser (paths, broadcasting of scales, codebook shapes) live
here too, so both sides enforce the same rules.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "HEADER",
    "MAGIC",
    "VERSION",
    "CodebookLeaf",
    "Leaf",
    "Manifest",
    "Pieces",
    "QArrayLeaf",
    "Raw",
    "RawLeaf",
    "Run",
    "Sparse",
    "SparseLeaf",
    "Stream",
    "Symbols",
    "broadcasts_into",
    "check_path",
    "codebook_fits",
    "pieces_of",
]

MAGIC = b"\x89JRM\r\n\x1a\n"
VERSION = 2
READS = (1, 2)
HEADER = struct.Struct("<8sHHII")
FLAG_ZLIB = 1
# Decoded elements a file may declare unless the caller allows more (4 GiB of float32).
DEFAULT_MAX_ELEMENTS = 1 << 30
# Every leaf counts as this many elements more: its record, arrays and dict entry.
LEAF_CHARGE = 64
MAX_NDIM = 32
MAX_PATH_CHARS = 4096
MAX_PATH_DEPTH = 64
# A compressed manifest may inflate to at most this ratio (plus a flat 1 MiB).
MAX_MANIFEST_RATIO = 32
# A leaf's symbols may lie in at most this many runs (one per stacked slice).
MAX_PIECES = 1 << 16
_MANIFEST_FREE = 1 << 20

DTYPES = {
    name: np.dtype(t)
    for name, t in {
        "bool": np.bool_,
        "int8": np.int8,
        "int16": np.int16,
        "int32": np.int32,
        "int64": np.int64,
        "uint8": np.uint8,
        "uint16": np.uint16,
        "uint32": np.uint32,
        "uint64": np.uint64,
        "float16": np.float16,
        "bfloat16": ml_dtypes.bfloat16,
        "float32": np.float32,
        "float64": np.float64,
    }.items()
}
FLOATS = frozenset(("float16", "bfloat16", "float32", "float64"))
INTS = frozenset(n for n in DTYPES if n.startswith(("int", "uint")))


# ------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class Raw:
    """An array stored as its little-endian bytes at ``offset`` in a section."""

    dtype: np.dtype
    shape: tuple[int, ...]
    section: int
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclasses.dataclass(frozen=True)
class Stream:
    """A coded symbol stream owning one section; leaves hold runs of it."""

    codec: str
    count: int
    alphabet: int
    section: int


@dataclasses.dataclass(frozen=True)
class Symbols:
    """Symbols ``[start, start + count)`` of stream ``stream``, each below ``alphabet``."""

    stream: int
    start: int
    count: int
    alphabet: int


@dataclasses.dataclass(frozen=True)
class Pieces:
    """A leaf's symbols as consecutive runs of several streams, one per stacked slice.

    Every piece has the leaf's alphabet; the symbols are the pieces' in order.
    """

    runs: tuple[Symbols, ...]

    @property
    def count(self) -> int:
        return sum(r.count for r in self.runs)

    @property
    def alphabet(self) -> int:
        return self.runs[0].alphabet


Run = Symbols | Pieces


def pieces_of(run: Run) -> tuple[Symbols, ...]:
    """The runs a leaf's symbols lie in (one, unless the leaf is split by slice)."""
    return run.runs if isinstance(run, Pieces) else (run,)


@dataclasses.dataclass(frozen=True)
class Sparse:
    """Relative indices of a pruned leaf: ``entries`` codes, ``kept`` of them real."""

    index_bits: int
    index: Run
    kept: int

    @property
    def entries(self) -> int:
        return self.index.count


@dataclasses.dataclass(frozen=True)
class Leaf:
    """What every leaf record holds: its path, kind, decoded shape and dtype."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype

    kind = "leaf"

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class RawLeaf(Leaf):
    data: Raw
    kind = "raw"


@dataclasses.dataclass(frozen=True)
class SparseLeaf(Leaf):
    sparse: Sparse
    values: Raw  # one value per entry; fillers hold +0
    kind = "sparse"


@dataclasses.dataclass(frozen=True)
class CodebookLeaf(Leaf):
    bits: int
    index_dtype: np.dtype
    centroids: Raw
    values: Run  # one codebook index per entry (or the filler symbol)
    sparse: Sparse | None
    filler: int | None
    kind = "codebook"


@dataclasses.dataclass(frozen=True)
class QArrayLeaf(Leaf):
    packed: bool  # two 4-bit entries per byte in memory (stored unpacked)
    group_size: int | None  # entries per scale on a grouped axis
    bits: int
    axis: int | None
    values_dtype: np.dtype
    offset: int  # symbol s stands for the integer value s + offset
    scale: Raw
    zero_point: Raw
    values: Run
    sparse: Sparse | None
    filler: int | None
    kind = "qarray"


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A checked file: its records and the bytes of each section."""

    version: int
    sections: tuple[memoryview, ...]
    streams: tuple[Stream, ...]
    leaves: tuple[Leaf, ...]
    overhead: int  # header and stored manifest bytes
    elements: int  # decoded elements of all leaves

    def raw(self, r: Raw) -> np.ndarray:
        """The array ``r`` describes (a fresh copy in native byte order)."""
        view = self.sections[r.section][r.offset : r.offset + r.nbytes]
        return np.frombuffer(view, r.dtype.newbyteorder("<")).astype(r.dtype).reshape(r.shape)


# ---------------------------------------------------- checks shared with the writer


def check_path(path: Any, error: type[Exception], what: str) -> str:
    """Checks a leaf path's type, length and depth (shared by encode and parse)."""
    if not isinstance(path, str):
        raise error(f"{what} path is not a string")
    if len(path) > MAX_PATH_CHARS:
        raise error(f"{what} path has {len(path)} characters, more than {MAX_PATH_CHARS}")
    if path.count("/") >= MAX_PATH_DEPTH:
        raise error(f"{what} path {path[:80]!r}... is deeper than {MAX_PATH_DEPTH} segments")
    return path


def broadcasts_into(
    small: tuple[int, ...], shape: tuple[int, ...], group_size: int | None = None
) -> bool:
    """True when ``small`` broadcasts to exactly ``shape`` (never enlarging it).

    With ``group_size``, an axis may also hold one entry per group of
    ``group_size`` consecutive entries (``ceil(n / group_size)`` of them).
    """
    if len(small) > len(shape):
        return False
    groups = lambda d: -(-d // group_size) if group_size else 1
    return all(s in (1, d, groups(d)) for s, d in zip(small[::-1], shape[::-1]))


def codebook_fits(centroids: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """One codebook ``(k,)``, or per slice: ``shape``'s rank plus ``k``, sizes 1 or full."""
    if len(centroids) == 1:
        return True
    return len(centroids) == len(shape) + 1 and all(
        c in (1, d) for c, d in zip(centroids[:-1], shape)
    )
