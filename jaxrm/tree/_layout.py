"""``Layout``: the axes of one leaf (stacked layers, output channels, contracted inputs)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxrm import _checks

__all__ = ["KINDS", "Layout"]

KINDS = ("dense", "conv", "embedding", "other")


@dataclasses.dataclass(frozen=True)
class Layout:
    """The axes of one leaf, in the leaf's own coordinates.

    Axes are stored non-negative and sorted; negative axes are accepted.

    Attributes:
      shape: the leaf's shape.
      stacked: axes of independent layers or fused tensors (``nn.scan`` /
        ``nnx.scan`` layers, Gemma's fused K/V); each slice along them is a
        layer of its own.
      out: output-channel axes (Flax ``Dense`` ``(in, out)``: ``(1,)``;
        Equinox ``Linear`` ``(out, in)``: ``(0,)``; attention q/k/v
        ``(emb, heads, head_dim)``: ``(1, 2)``).
      contract: contracted (input) axes (Flax ``Dense``: ``(0,)``; HWIO conv:
        ``(2,)``; attention out ``(heads, head_dim, emb)``: ``(0, 1)``).
      kind: ``"dense"``, ``"conv"``, ``"embedding"`` or ``"other"``.

    Raises:
      ValueError: an axis out of range, an axis in two groups or twice in
        one, stacked axes that leave no axis to a slice (e.g. on a 1-D leaf),
        or an unknown ``kind``.
      TypeError: a non-integer axis or dimension.
    """

    shape: tuple[int, ...]
    stacked: tuple[int, ...] = ()
    out: tuple[int, ...] = ()
    contract: tuple[int, ...] = ()
    kind: str = "other"

    def __post_init__(self):
        if isinstance(self.shape, int | str) or not hasattr(self.shape, "__iter__"):
            raise TypeError(f"Layout.shape must be a tuple of ints, got {self.shape!r}")
        shape = tuple(
            _checks.integer(d, f"Layout.shape[{i}]", minimum=0) for i, d in enumerate(self.shape)
        )
        ndim = len(shape)
        groups = {}
        for name in ("stacked", "out", "contract"):
            groups[name] = tuple(sorted(_checks.axes(getattr(self, name), name, ndim)))
        seen: dict[int, str] = {}
        for name, axes in groups.items():
            for a in axes:
                if a in seen:
                    raise ValueError(
                        f"axis {a} of a leaf of shape {shape} is both {seen[a]} and {name}"
                    )
                seen[a] = name
        if groups["stacked"] and len(groups["stacked"]) >= ndim:
            raise ValueError(
                f"stacked axes {groups['stacked']} leave no axis to a slice of a leaf of "
                f"shape {shape}: a stacked leaf needs at least one more axis"
            )
        _checks.choice(self.kind, "kind", KINDS)
        object.__setattr__(self, "shape", shape)
        for name, axes in groups.items():
            object.__setattr__(self, name, axes)

    @property
    def n_slices(self) -> int:
        """The number of independent slices (1 without stacked axes)."""
        return math.prod(self.shape[a] for a in self.stacked)

    @property
    def slice_shape(self) -> tuple[int, ...]:
        """The shape of one slice: ``shape`` without the stacked axes."""
        return tuple(d for a, d in enumerate(self.shape) if a not in self.stacked)

    def _renumber(self, axes: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(a - sum(s < a for s in self.stacked) for a in axes)

    def slice(self) -> Layout:
        """The layout of one slice: stacked axes removed, other axes renumbered."""
        return Layout(
            self.slice_shape, (), self._renumber(self.out), self._renumber(self.contract),
            self.kind,
        )

    def _perm(self) -> tuple[int, ...]:
        rest = tuple(a for a in range(len(self.shape)) if a not in self.stacked)
        return self.stacked + rest

    def to_slices(self, x: Any) -> Any:
        """``x`` of ``shape`` as an array ``(n_slices, *slice_shape)`` (numpy stays numpy).

        Raises:
          ValueError: ``x`` does not have the layout's shape.
        """
        if tuple(np.shape(x)) != self.shape:
            raise ValueError(
                f"array of shape {tuple(np.shape(x))} given to a layout of {self.shape}"
            )
        xp = np if isinstance(x, np.ndarray) else jnp
        if self.stacked:
            x = xp.transpose(x, self._perm())
        return xp.reshape(x, (self.n_slices, *self.slice_shape))

    def from_slices(self, y: Any) -> Any:
        """The inverse of [to_slices][jaxrm.tree.Layout.to_slices]: an array of ``shape``.

        Raises:
          ValueError: ``y`` does not have ``(n_slices, *slice_shape)`` elements.
        """
        want = (self.n_slices, *self.slice_shape)
        if math.prod(np.shape(y)) != math.prod(want) or tuple(np.shape(y))[1:] != want[1:]:
            raise ValueError(f"array of shape {tuple(np.shape(y))} given where {want} is needed")
        xp = np if isinstance(y, np.ndarray) else jnp
        lead = tuple(self.shape[a] for a in self.stacked)
        y = xp.reshape(y, (*lead, *self.slice_shape))
        if self.stacked:
            y = xp.transpose(y, tuple(np.argsort(self._perm())))
        return y
