"""Checkpoints of a pipeline run: orbax saves of the library's trees plus a JSON record."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpoints"]


class Checkpoints:
    """Orbax checkpoints of the library's trees as they are.

    Parameters, masks (``None`` leaves included), optax states and
    quantized trees are plain pytrees, so orbax saves them directly; the
    caller gives templates of the same structure, whose shapes, dtypes and
    shardings the restore follows. A JSON record written after the arrays
    marks a checkpoint complete.
    """

    def __init__(self, root: Path):
        self.root = root
        self.ckptr = ocp.StandardCheckpointer()

    def _dir(self, name: str) -> Path:
        return (self.root / name).absolute()

    def has(self, name: str) -> bool:
        return (self.root / f"{name}.json").is_file()

    def save(self, name: str, trees: dict[str, Any], meta: dict) -> None:
        self.ckptr.save(self._dir(name), trees, force=True)
        self.ckptr.wait_until_finished()
        _write_json(self.root / f"{name}.json", meta)  # written last: marks completion

    def restore(self, name: str, templates: dict[str, Any]) -> tuple[dict[str, Any], dict]:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, templates)
        trees = self.ckptr.restore(self._dir(name), abstract)
        return trees, json.loads((self.root / f"{name}.json").read_text())

    def drop(self, name: str) -> None:
        (self.root / f"{name}.json").unlink(missing_ok=True)
        shutil.rmtree(self._dir(name), ignore_errors=True)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic | jax.Array):
        return np.asarray(x).item() if np.ndim(x) == 0 else np.asarray(x).tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")
