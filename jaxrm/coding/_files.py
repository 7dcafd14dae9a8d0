"""Atomic ``save`` and bounded ``load`` of ``.jrm`` files.

A save writes ``.<name>.jrm-<random>.tmp`` beside the target, holds an
exclusive ``flock`` on it while writing, fsyncs it, gives it the target's
mode (or ``0o666`` minus the umask for a new file), renames it over the
target and fsyncs the directory. A save that was killed leaves its temporary
file unlocked; the next save to that directory removes such files once they
are a minute old (a live writer still holds its lock).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from typing import Any

from jaxrm.coding import _decode, _encode
from jaxrm.coding import _records as mf

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, no stale-file cleanup
    fcntl = None

__all__ = ["load", "save"]

_TMP_MARK = ".jrm-"
_TMP_SUFFIX = ".tmp"
_STALE_AFTER_S = 60.0


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # not thread-safe, hence only where /proc is missing
    os.umask(mask)
    return mask


def _clean_stale(directory: str) -> None:
    """Removes temporary files of killed saves: unlocked and older than a minute."""
    if fcntl is None:
        return
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(directory) as it:
        for entry in it:
            name = entry.name
            if not (name.startswith(".") and _TMP_MARK in name and name.endswith(_TMP_SUFFIX)):
                continue
            with contextlib.suppress(OSError):
                if not entry.is_file(follow_symlinks=False):
                    continue
                if now - entry.stat(follow_symlinks=False).st_mtime < _STALE_AFTER_S:
                    continue
                fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while a writer lives
                    os.unlink(entry.path)
                finally:
                    os.close(fd)


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse directory fsync
        pass
    finally:
        os.close(fd)


def save(path: str | os.PathLike, tree: Any, **kwargs: Any) -> int:
    """Encodes ``tree`` and writes it to ``path`` atomically.

    The bytes go to a temporary file in the target's directory, are fsynced,
    and replace the target with ``os.replace``; the directory is fsynced
    after the rename. If anything fails, the old file is untouched and no
    partial file is left. Temporary files of saves that were killed are
    removed by the next save to the same directory.

    The written file keeps the mode of the file it replaces; a new file gets
    ``0o666`` minus the umask, as ``open`` would give it. When ``path`` is a
    symbolic link, the file it points to is replaced and the link is kept
    (so a link into a checkpoint store stays a link).

    Args:
      path: the file to write (conventionally ending in ``.jrm``).
      tree: the tree to encode.
      **kwargs: passed to [jaxrm.coding.encode][] (``masks``, ``entropy``, ``index_bits``).

    Returns:
      The number of bytes written.

    Raises:
      ValueError: as [jaxrm.coding.encode][] raises it (bad trees and settings).
      TypeError: as [jaxrm.coding.encode][] raises it (bad types).
      OSError: the file system refused the write (nothing is left behind).
    """
    data = _encode.encode(tree, **kwargs)
    target = os.path.realpath(os.fspath(path))  # through symbolic links, deliberately
    directory = os.path.dirname(target)
    _clean_stale(directory)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    prefix = "." + os.path.basename(target)[:100] + _TMP_MARK
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=_TMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
            os.replace(tmp, target)  # while still locked: no cleaner may take it
        _fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return len(data)


def load(
    path: str | os.PathLike,
    like: Any = None,
    *,
    dequantize: bool = True,
    max_elements: int = mf.DEFAULT_MAX_ELEMENTS,
) -> Any:
    """Reads a ``.jrm`` file written by [jaxrm.coding.save][]; see [jaxrm.coding.decode][].

    Args:
      path: the file.
      like: the structure to decode into (see [jaxrm.coding.decode][]).
      dequantize: ``False`` to get ``Codebook``/``QArray`` leaves back.
      max_elements: the most decoded elements the file may declare.

    Returns:
      The decoded tree.

    Raises:
      FormatError: the file is not a well-formed ``.jrm`` file.
      OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read()
    return _decode.decode(data, like, dequantize=dequantize, max_elements=max_elements)
