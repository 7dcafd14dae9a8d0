"""The King James Bible from Debian's ``bible-kjv-text``, as a byte-level corpus.

Debian ships the public-domain KJV text in ``bible-kjv-text`` (a fixed,
versioned package any Debian or Ubuntu machine can fetch without root through
``apt-get download``), compressed in the format of its reader ``bible`` from
``bible-kjv``. Both ``.deb`` files are fetched, checked against the SHA-256
sums pinned below, unpacked with ``dpkg-deb -x``, and the reader prints every
verse (``Gen1:1-Rev22:21``, one per line); the verse references are stripped
and the text is cached, with its own SHA-256 checked, under ``build/llm/``.
The last 10% of verses (in canonical order, ending with Revelation) are held
out for perplexity.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

VERSION = "4.38"
DEBS = {
    f"bible-kjv-text_{VERSION}_all.deb": (
        "d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a"
    ),
    f"bible-kjv_{VERSION}_amd64.deb": (
        "75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d"
    ),
}
CACHE = Path(__file__).resolve().parent.parent / "build" / "llm"
_REF = re.compile(rb"^[1-3]?[A-Za-z]+\d+:\d+ ")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch(name: str, want: str, where: Path) -> Path:
    path = where / name
    if not path.exists():
        package = name.split("_")[0]
        subprocess.run(
            ["apt-get", "download", f"{package}={VERSION}"],
            cwd=where,
            check=True,
            capture_output=True,
        )
    got = _sha256(path)
    if got != want:
        path.unlink()
        raise RuntimeError(f"{name}: SHA-256 {got} is not the pinned {want}")
    return path


def text(cache: Path = CACHE) -> bytes:
    """The whole KJV, one verse per line, fetched once and cached."""
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / "kjv.txt"
    if out.exists():
        return out.read_bytes()
    debs = {name: _fetch(name, sha, cache) for name, sha in DEBS.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for path in debs.values():
            subprocess.run(["dpkg-deb", "-x", str(path), tmp], check=True)
        printed = subprocess.run(
            [f"{tmp}/usr/bin/bible", "-f", "-p", f"{tmp}/usr/lib", "Gen1:1-Rev22:21"],
            check=True,
            capture_output=True,
        ).stdout
    lines = [_REF.sub(b"", line) for line in printed.splitlines() if line.strip()]
    if len(lines) != 31102:  # the KJV's verse count
        raise RuntimeError(f"expected 31102 verses, the reader printed {len(lines)}")
    data = b"\n".join(lines) + b"\n"
    out.write_bytes(data)
    return data


def splits(data: bytes, held_out: float = 0.1) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Byte tokens of the train and held-out splits, and the vocabulary (sorted bytes)."""
    vocab = sorted(set(data))
    table = np.zeros(256, np.int32)
    table[vocab] = np.arange(len(vocab))
    lines = data.splitlines(keepends=True)
    cut = int(len(lines) * (1 - held_out))
    train = table[np.frombuffer(b"".join(lines[:cut]), np.uint8)]
    test = table[np.frombuffer(b"".join(lines[cut:]), np.uint8)]
    return train, test, vocab
