"""Calibration statistics: per weight, per stacked slice, the input second moment and more."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from jaxrm import tree as jtree

__all__ = ["LeafStats", "Stats"]


@dataclasses.dataclass(frozen=True)
class LeafStats:
    """What the calibration data did at one weight leaf, slice by slice.

    The layer's input features are the leaf's ``contract`` axes raveled in the
    leaf's own axis order (``(in,)`` of a Dense kernel, ``(H, W, in)`` of an HWIO
    conv filter, ``(heads, head_dim)`` of an attention output kernel); its output
    channels are the ``out`` axes; the ``stacked`` axes index independent layers
    (``nn.scan`` / ``nnx.scan``), each a slice with statistics of its own. The
    axes were read from the matmul or convolution the leaf fed, not guessed
    from names.

    Attributes:
      path: the leaf's path.
      shape: the leaf's shape.
      kind: ``"dense"`` (a ``dot_general``) or ``"conv"`` (im2col rows).
      stacked, contract, out: leaf axes (see above); together all axes.
      hessian: float64 ``(n_slices, d_in, d_in)``, the sum of ``x^T x`` over rows.
      abs_sum: float64 ``(n_slices, d_in)``, the sum of ``|x|`` per input feature.
      abs_max: float64 ``(n_slices, d_in)``, the largest ``|x|`` per input feature.
      rows: int64 ``(n_slices,)``, the number of input rows seen per slice.
    """

    path: str
    shape: tuple[int, ...]
    kind: str
    stacked: tuple[int, ...]
    contract: tuple[int, ...]
    out: tuple[int, ...]
    hessian: np.ndarray
    abs_sum: np.ndarray
    abs_max: np.ndarray
    rows: np.ndarray

    @property
    def n_slices(self) -> int:
        return int(np.prod([self.shape[a] for a in self.stacked], dtype=np.int64))

    @property
    def d_in(self) -> int:
        return int(np.prod([self.shape[a] for a in self.contract], dtype=np.int64))

    @property
    def d_out(self) -> int:
        return int(np.prod([self.shape[a] for a in self.out], dtype=np.int64))

    def norms(self) -> np.ndarray:
        """``||X_j||_2`` per input feature, ``(n_slices, d_in)`` (Wanda's activation norm)."""
        return np.sqrt(np.maximum(np.diagonal(self.hessian, axis1=1, axis2=2), 0.0))

    def mean_abs(self) -> np.ndarray:
        """Mean ``|x_j|`` per input feature, ``(n_slices, d_in)`` (AWQ's activation scale)."""
        return self.abs_sum / np.maximum(self.rows, 1)[:, None]

    @property
    def _perm(self) -> tuple[int, ...]:
        return (*self.stacked, *self.contract, *self.out)

    def matrix(self, w: Any) -> Any:
        """Views a leaf-shaped array as ``(n_slices, d_in, d_out)`` (numpy or JAX)."""
        return w.transpose(self._perm).reshape(self.n_slices, self.d_in, self.d_out)

    def unmatrix(self, m: Any) -> Any:
        """Inverse of ``matrix``: ``(n_slices, d_in, d_out)`` back to the leaf's shape."""
        perm = self._perm
        m = m.reshape(tuple(self.shape[a] for a in perm))
        return m.transpose(tuple(np.argsort(perm)))

    def channel_shape(self) -> tuple[int, ...]:
        """Shape of a per-slice, per-output-channel array (1 on the contracted axes)."""
        return tuple(1 if a in self.contract else n for a, n in enumerate(self.shape))

    def group_dims(self, group_size: int | None) -> tuple[int, ...]:
        """Shape of a per-slice, per-channel, per-group array in the leaf's coordinates.

        Groups are ``group_size`` consecutive input features (raveled); each
        contracted axis gets size 1 (one group spans it), its full size, or
        ``size // k`` (a group spans ``k`` entries of it), so that repeating each
        entry along each axis restores the leaf's shape.

        Raises:
          ValueError: ``group_size`` does not tile the contracted axes.
        """
        dims = list(self.shape)
        rest = self.d_in if group_size is None else int(group_size)
        if rest < 1 or self.d_in % rest:
            raise ValueError(
                f"group_size={group_size} must divide the {self.d_in} input features of "
                f"leaf {self.path!r}"
            )
        for a in reversed(self.contract):
            n = self.shape[a]
            if rest == 1:
                continue
            if rest % n == 0:
                dims[a], rest = 1, rest // n
            elif n % rest == 0:
                dims[a], rest = n // rest, 1
            else:
                raise ValueError(
                    f"group_size={group_size} does not tile axis {a} (size {n}) of leaf "
                    f"{self.path!r}"
                )
        return tuple(dims)

    def from_groups(self, g: Any, group_size: int | None) -> Any:
        """``(n_slices, groups, d_out)`` per-group values to the leaf's coordinates."""
        dims = self.group_dims(group_size)
        perm = self._perm
        g = g.reshape(tuple(dims[a] for a in perm))
        return g.transpose(tuple(np.argsort(perm)))

    def check_rows(self, argument: str = "stats") -> None:
        """Raises ``ValueError`` if a slice saw no calibration rows."""
        empty = np.flatnonzero(self.rows == 0)
        if empty.size:
            raise ValueError(
                f"{argument} at leaf {self.path!r}: stacked slice(s) {empty[:8].tolist()} "
                "saw no calibration rows (the calibration data never reached them)"
            )


@dataclasses.dataclass(frozen=True)
class Stats(Mapping):
    """Calibration statistics of a model, a mapping ``path -> LeafStats``.

    Attributes:
      leaves: the statistics per leaf path, in the parameters' flattening order.
      skipped: notes on parameter uses whose statistics were not recorded (e.g.
        a weight inside a ``while`` loop); empty when every use was recorded.
      batches: the number of calibration batches seen.
      order: ``(path, slice)`` pairs in the order the forward pass first used
        them (the order [jaxrm.calib.sequential][] compresses them in).
    """

    leaves: dict[str, LeafStats]
    skipped: tuple[str, ...] = ()
    batches: int = 0
    order: tuple[tuple[str, int], ...] = ()

    def __getitem__(self, path: str) -> LeafStats:
        return self.leaves[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self.leaves)

    def __len__(self) -> int:
        return len(self.leaves)

    def pick(
        self, params: Any, where: jtree.Where = None, *, argument: str = "stats"
    ) -> list[tuple[str, Any, LeafStats]]:
        """The leaves a one-shot method works on, checked against ``params``.

        With ``where=None`` every leaf that has statistics; otherwise the leaves
        ``where`` selects, each of which must have statistics.

        Returns:
          ``[(path, leaf, LeafStats), ...]`` in flattening order.

        Raises:
          ValueError: the statistics name leaves ``params`` does not have, or of
            another shape (statistics from another model), a selected leaf has
            no statistics, or a slice saw no calibration rows.
        """
        flat = jtree.leaves_with_paths(params)
        by_path = dict(flat)
        foreign = [p for p in self.leaves if p not in by_path]
        if foreign:
            raise ValueError(
                f"{argument} were collected on another model: leaves {foreign[:5]} are not in "
                f"params (params has {list(by_path)[:8]})"
            )
        for p, ls in self.leaves.items():
            if tuple(np.shape(by_path[p])) != ls.shape:
                raise ValueError(
                    f"{argument} at leaf {p!r} are for shape {ls.shape}, but params has "
                    f"shape {tuple(np.shape(by_path[p]))} (statistics from another model?)"
                )
        if where is None:
            chosen = [p for p, _ in flat if p in self.leaves]
        else:
            chosen = jtree.selected(params, where)
        out = []
        for p in chosen:
            if p not in self.leaves:
                raise ValueError(
                    f"{argument} has no statistics for leaf {p!r}: it did not feed a matmul "
                    "or convolution during calibration (recorded: "
                    f"{list(self.leaves)[:8]})"
                )
            self.leaves[p].check_rows(argument)
            out.append((p, by_path[p], self.leaves[p]))
        if not out:
            raise ValueError(f"{argument} holds no statistics for any leaf of params")
        return out

    def select(self, where: jtree.Where) -> Stats:
        """The statistics of the paths matching ``where`` (a regex or ``(path, stats)`` test)."""
        if isinstance(where, str):
            pat = re.compile(where)
            keep = {p: s for p, s in self.leaves.items() if pat.search(p)}
        elif where is None:
            keep = dict(self.leaves)
        else:
            keep = {p: s for p, s in self.leaves.items() if where(p, s)}
        return dataclasses.replace(self, leaves=keep)
