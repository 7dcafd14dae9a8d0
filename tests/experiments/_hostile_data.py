"""Hostile inputs for the MNIST readers: crafted pickles, IDX/gzip files and caches.

Each case is ``name -> (kind, build)``; ``build(tmp_path)`` returns the bytes
(for ``pickle`` and ``idx``) or writes a cache file and returns its path (for
``cache``). Every one must be refused with ``DataError`` (a corrupt cache:
ignored with a warning) without a large allocation. Shared by the tests and
by the script that counts outcomes against another version of the readers.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zipfile

import numpy as np

_RECONSTRUCT = np._core.multiarray._reconstruct


class Reduce:
    """Pickles as ``func(*args)`` followed by ``BUILD state`` (if given)."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def dtype_with_state(spec: str, state: tuple) -> Reduce:
    """A dtype as numpy pickles it, with a chosen ``__setstate__`` state."""
    return Reduce(np.dtype, (spec, False, True), state)


def array_with_state(shape, dtype, raw: bytes) -> Reduce:
    """An array as numpy pickles it: ``_reconstruct`` then ``BUILD (1, shape, dtype, F, raw)``."""
    return Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, shape, dtype, False, raw))


def _p(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _nested(depth: int) -> bytes:
    # depth EMPTY_LISTs, each APPENDed into the one below: [[[...]]]
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def _self_list() -> bytes:
    x: list = []
    x.append(x)
    return _p(x)


_F8 = np.dtype("f8")
_PLAIN = (None, None, None, -1, -1, 0)

PICKLES = {
    # numpy.ndarray is needed as _reconstruct's argument, but must not be callable
    "call ndarray 2 GiB (36-byte pickle)": lambda: _p(Reduce(np.ndarray, ((2**31,),))),
    "call ndarray 1 TiB (MemoryError)": lambda: _p(Reduce(np.ndarray, ((2**40,),))),
    "object array inside a dict": lambda: _p({"x": Reduce(np.ndarray, ((3,), "O"))}),
    "void array inside a dict": lambda: _p({"x": Reduce(np.ndarray, ((3,), "V8"))}),
    "_reconstruct with a 2 GiB shape": lambda: _p(
        Reduce(_RECONSTRUCT, (np.ndarray, (2**31,), b"b"))),
    # BUILD on the allowed dtype: fields, flags, sizes, subarrays
    "dtype BUILD adds a field at offset 0": lambda: _p(array_with_state(
        (2,), dtype_with_state("f8", (3, "<", None, ("a",), {"a": (_F8, 0)}, 8, 1, 16)),
        b"\0" * 16)),
    "dtype BUILD adds a field at offset 2**40": lambda: _p(array_with_state(
        (1,), dtype_with_state("f8", (3, "<", None, ("a",), {"a": (_F8, 2**40)}, 8, 1, 16)),
        b"\0" * 8)),
    "dtype BUILD adds a field at offset -2**40": lambda: _p(array_with_state(
        (1,), dtype_with_state("f8", (3, "<", None, ("a",), {"a": (_F8, -2**40)}, 8, 1, 16)),
        b"\0" * 8)),
    "dtype BUILD sets the object flags": lambda: _p(array_with_state(
        (1,), dtype_with_state("f8", (3, "<", None, None, None, -1, -1, 63)), b"\0" * 8)),
    "dtype BUILD makes a subarray of 10**6": lambda: _p(array_with_state(
        (1,), dtype_with_state("f8", (3, "<", (_F8, (10**6,)), None, None, -1, -1, 0)),
        b"\0" * 8)),
    "dtype BUILD sets a huge alignment": lambda: _p(array_with_state(
        (1,), dtype_with_state("f8", (3, "<", None, None, None, -1, 2**62, 0)), b"\0" * 8)),
    "dtype BUILD sets a negative item size": lambda: _p(array_with_state(
        (1,), dtype_with_state("f8", (3, "<", None, None, None, -5, -1, 0)), b"\0" * 8)),
    "dtype BUILD sets a bogus byte order": lambda: _p(array_with_state(
        (1,), dtype_with_state("f8", (3, "x", *_PLAIN)), b"\0" * 8)),
    "array BUILD with str data above latin1": lambda: _p(
        array_with_state((2,), np.dtype("u1"), "a\u0100")),
    "array BUILD with str data of the wrong length": lambda: _p(
        array_with_state((2,), np.dtype("u1"), "abc")),
    "array BUILD with a short buffer": lambda: _p(array_with_state((4,), _F8, b"\0" * 8)),
    "array BUILD with 100 dimensions": lambda: _p(array_with_state((1,) * 100, np.dtype("u1"),
                                                                  b"\0")),
    "lists nested 100000 deep (RecursionError)": lambda: _nested(100_000),
    "a list that contains itself (RecursionError)": _self_list,
    "dtype string 'O' (object)": lambda: _p(Reduce(np.dtype, ("O", False, True))),
    "dtype string '<U10'": lambda: _p(Reduce(np.dtype, ("<U10", False, True))),
}


def idx_header(shape) -> bytes:
    return struct.pack(">HBB", 0, 8, len(shape)) + struct.pack(">" + "I" * len(shape), *shape)


def _gzip_bomb(shape, zeros: int) -> bytes:
    """An IDX header for ``shape`` then ``zeros`` zero bytes, gzipped.

    gzip readers join concatenated members into one stream, so one member of
    1 MiB of zeros (about 1 KB) repeated makes the bomb without compressing
    hundreds of MiB here.
    """
    mib = gzip.compress(bytes(1 << 20), compresslevel=9)
    return gzip.compress(idx_header(shape)) + mib * (zeros >> 20)


def _corrupt_deflate() -> bytes:
    good = bytearray(gzip.compress(idx_header((3,)) + bytes(range(3)) * 100))
    good[12:20] = b"\xff" * 8  # inside the deflate stream
    return bytes(good)


IDX = {
    "gzip bomb: 784-byte header, 512 MiB inflated": lambda: _gzip_bomb((1, 28, 28), 512 << 20),
    "gzip bomb: 60000x28x28 header, 512 MiB inflated": lambda: _gzip_bomb((60000, 28, 28),
                                                                         512 << 20),
    "header dims whose np.prod wraps to 0": lambda: idx_header((1 << 22, 1 << 21, 1 << 21)),
    "header dims (2**32-1)**3": lambda: idx_header((2**32 - 1,) * 3),
    "corrupt deflate stream (zlib.error)": _corrupt_deflate,
    "truncated gzip": lambda: gzip.compress(idx_header((10,)) + bytes(10))[:-12],
    "one trailing byte": lambda: idx_header((3,)) + bytes(4),
}


def _npy(shape_text: str, descr: str = "|u1", payload: bytes = b"") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}"
    header = header.ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


def _npz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, blob in members.items():
            z.writestr(name + ".npy", blob)
    return buf.getvalue()


_FIELDS = ("train_images", "train_labels", "test_images", "test_labels")


def _cache_with(first: bytes) -> bytes:
    ok = {f: _npy("(1,)", payload=b"\0") for f in _FIELDS}
    return _npz({**ok, "train_images": first})


CACHES = {
    "member declares (2**40, 28, 28) (MemoryError)": lambda: _cache_with(
        _npy("(1099511627776, 28, 28)")),
    "member declares 822 MB, holds 0": lambda: _cache_with(_npy("(1048576, 28, 28)")),
    "member of dtype object": lambda: _cache_with(_npy("(1,)", "|O", b"\0" * 8)),
    "member with a structured dtype": lambda: _cache_with(
        _npy("(1,)", "[('a', '<f8')]", b"\0" * 8)),
    "truncated zip": lambda: _cache_with(_npy("(1,)", payload=b"\0"))[:100],
    "not a zip": lambda: b"garbage",
}


def cases():
    """Every case as ``(category, name, build)``."""
    out = [("pickle", k, v) for k, v in PICKLES.items()]
    out += [("idx", k, v) for k, v in IDX.items()]
    out += [("cache", k, v) for k, v in CACHES.items()]
    return out
