"""``layouts``: each leaf's axes, from the framework's conventions and metadata.

The rules (``docs/layouts.md`` has them as tables):

1. Stacked axes: ``stacked=`` wins; else the axes whose Flax partition name
   (``nn.Partitioned`` / ``nn.LogicallyPartitioned`` / NNX ``out_sharding``,
   as ``nn.scan(..., metadata_params={nn.PARTITION_NAME: "layers"})`` and
   ``nnx.scan``/``nnx.vmap(transform_metadata=...)`` write them) matches
   [`STACKED_NAMES`][jaxrm.tree.STACKED_NAMES]; else, where the layer type fixes the rank of one
   layer's leaf (Equinox ``Linear``/``Conv``/``Embedding``/norms, Flax
   ``Dense_*``/``Embed_*``/``LayerNorm_*`` modules, attention ``query``/
   ``key``/``value``/``out`` (or ``q``/``k``/``v``/``o``), Gemma einsums),
   the extra leading axes; else none.
2. The output and contracted axes of one slice follow the layer: Flax
   ``kernel`` ``(in, out)``, HWIO conv ``(..., in, out)``, attention
   ``(emb, heads, hd)`` / ``(heads, hd, emb)``, ``DenseGeneral`` ``(in, out...)``;
   Equinox/PyTorch ``weight`` ``(out, in, ...)``; embeddings ``(vocab, features)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from jaxrm import _checks
from jaxrm.tree._flat import flatten
from jaxrm.tree._frameworks import LeafInfo
from jaxrm.tree._layout import Layout
from jaxrm.tree._paths import is_array
from jaxrm.tree._select import is_weight_name
from jaxrm.tree._settings import resolve

__all__ = ["STACKED_NAMES", "layouts"]

STACKED_NAMES = re.compile(
    r"^(layers?|stack(ed)?|scan(ned)?|blocks?|repeats?|depth|stages?|experts?)$", re.IGNORECASE
)
"""Partition names that mark a stacked axis (``nn.PARTITION_NAME`` values)."""

_QKV = re.compile(r"^(query|key|value|q|k|v)$")
_ATTN_OUT = re.compile(r"^(out|o)$")
_DENSE = re.compile(r"^(Dense|Linear)(_\d+)?$")
_GENERAL = re.compile(r"^(DenseGeneral|LinearGeneral)(_\d+)?$")
_CONV = re.compile(r"^(Conv|ConvTranspose|ConvLocal)(_\d+)?$")
_EMBED = re.compile(r"^Embed(_\d+)?$")
_NORM = re.compile(r"^(LayerNorm|RMSNorm|BatchNorm|GroupNorm)(_\d+)?$")
# Gemma-style einsum kernels ``w``: (rank of one layer, fused leading axes, slice rule).
_EINSUM = {
    "q_einsum": (3, 0, "heads_in"),
    "kv_einsum": (4, 1, "heads_in"),
    "qkv_einsum": (4, 1, "heads_in"),
    "attn_vec_einsum": (3, 0, "heads_out"),
}


def _axes(rule: str, r: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(out, contract)`` of one slice of rank ``r`` under a named rule."""
    if r < 2 and rule != "embedding":
        return (), ()
    if rule == "in_out":  # Flax Dense, HWIO conv, unknown names: (..., in, out)
        return (r - 1,), (r - 2,)
    if rule == "out_in":  # Equinox/PyTorch Linear, OIHW conv
        return (0,), (1,)
    if rule == "general":  # DenseGeneral (in, out...), attention q/k/v (emb, heads, hd)
        return tuple(range(1, r)), (0,)
    if rule == "attn_out":  # (heads, hd, emb)
        return (r - 1,), tuple(range(r - 1))
    if rule == "heads_in":  # Gemma (heads, emb, hd)
        return (0, 2) if r == 3 else (), (1,) if r == 3 else ()
    if rule == "heads_out":  # Gemma (heads, hd, emb)
        return ((2,), (0, 1)) if r == 3 else ((), ())
    if rule == "embedding":
        return ((r - 1,), ()) if r >= 1 else ((), ())
    return (), ()


def _role(path: str, info: LeafInfo | None) -> tuple[str, str, int | None, int]:
    """``(kind, rule, rank of one layer or None, fused leading axes)`` of a leaf."""
    segments = path.split("/")
    name, parent = segments[-1], (segments[-2] if len(segments) > 1 else "")
    if info is not None and info.module is not None:
        if info.field == "weight":
            if info.module == "Linear":
                return "dense", "out_in", info.rank, 0
            if info.module in ("Conv", "ConvTranspose"):
                return "conv", "out_in", info.rank, 0
            if info.module == "Embedding":
                return "embedding", "embedding", info.rank, 0
        return "other", "none", info.rank, 0
    if name == "kernel":
        if _QKV.match(parent):
            return "dense", "general", 3, 0
        if _ATTN_OUT.match(parent):
            return "dense", "attn_out", 3, 0
        if _DENSE.match(parent):
            return "dense", "in_out", 2, 0
        if _GENERAL.match(parent):
            return "dense", "general", None, 0
        return "conv", "in_out", None, 0  # a 2-D one is a Dense: fixed below
    if name == "embedding":
        return "embedding", "embedding", 2, 0
    if name == "w" and parent in _EINSUM:
        rank, fused, rule = _EINSUM[parent]
        return "dense", rule, rank, fused
    if name == "weight":
        if re.search("norm", parent, re.IGNORECASE):
            return "other", "none", None, 0
        return "other", "out_in", None, 0  # kind set from the rank below
    if name in ("bias", "scale", "mean", "var"):
        if _QKV.match(parent):
            return "other", "none", 2, 0
        if _DENSE.match(parent) or _ATTN_OUT.match(parent) or _NORM.match(parent):
            return "other", "none", 1, 0
        return "other", "none", None, 0
    return "other", ("in_out" if is_weight_name(path) else "none"), None, 0


def _stacked_from_names(names: tuple | None, ndim: int) -> tuple[int, ...] | None:
    if names is None or len(names) != ndim:
        return None
    found = tuple(
        a for a, n in enumerate(names) if isinstance(n, str) and STACKED_NAMES.match(n)
    )
    return found or None


def infer(path: str, shape: tuple[int, ...], info: LeafInfo | None,
          stacked: tuple[int, ...] | None) -> Layout:
    """The layout of one leaf (``stacked``: explicit stacked axes or ``None`` to infer)."""
    ndim = len(shape)
    kind, rule, rank, fused = _role(path, info)
    if stacked is None:
        stacked = _stacked_from_names(info.names if info else None, ndim)
        if stacked is not None:
            # Fused axes (Gemma's K/V) sit at the front of each layer's slice.
            rest = [a for a in range(ndim) if a not in stacked]
            stacked = tuple(sorted(stacked + tuple(rest[:fused])))
        elif rank is not None and ndim > rank - fused:
            stacked = tuple(range(max(ndim - rank, 0) + fused))
        else:
            stacked = ()
    r = ndim - len(stacked)
    if rule == "out_in" and info is None:
        kind = "dense" if r == 2 else ("conv" if r >= 3 else "other")
    if kind == "conv" and r == 2:
        kind = "dense"
    out, contract = _axes(rule, r)
    rest = [a for a in range(ndim) if a not in stacked]
    return Layout(
        shape,
        tuple(stacked),
        tuple(rest[a] for a in out),
        tuple(rest[a] for a in contract),
        kind if r >= 2 or kind == "embedding" else "other",
    )


def _is_stacked_value(value: Any) -> bool:
    return value is None or _checks.is_int(value) or (
        isinstance(value, tuple) and all(_checks.is_int(a) for a in value)
    )


def layouts(
    tree: Any,
    *,
    stacked: Any = None,
    layout: Any = None,
    is_leaf: Callable[[Any], bool] | None = None,
    only: Any = None,
) -> list[Layout | None]:
    """The [jaxrm.tree.Layout][] of every leaf, in flattening order.

    Args:
      tree: any parameter pytree (or a [jaxrm.tree.Flat][] of it); Flax
        boxes (``nn.Partitioned``, NNX variables) and Equinox modules in it
        are read for metadata.
      stacked: per-leaf setting of stacked axes: ``None`` (infer), an int,
        or a tuple of ints (``()``: not stacked); see [jaxrm.tree.resolve][].
      layout: per-leaf setting of ``Layout`` overrides (``None``: infer).
      is_leaf: passed to the flattening (e.g. ``quant.is_quantized``).
      only: one bool per leaf; leaves marked ``False`` get ``None`` (settings
        are not consulted for them).

    Returns:
      One ``Layout`` per array leaf, ``None`` for other leaves.

    Raises:
      ValueError: a stacked axis out of range or leaving no axis (a 1-D
        leaf), a ``layout`` of the wrong shape, or ``stacked`` and ``layout``
        that disagree on a leaf; the message names the argument and leaf path.
      TypeError: a ``stacked`` entry that is not an int or a tuple of ints, or a
        ``layout`` entry that is not a ``Layout``.
    """
    fl = flatten(tree, is_leaf)
    info = fl.info
    wanted = [True] * len(fl) if only is None else list(only)
    st = resolve(stacked, fl, argument="stacked", is_scalar=_is_stacked_value,
                 default=None, only=wanted)
    lo = resolve(layout, fl, argument="layout",
                 is_scalar=lambda v: v is None or isinstance(v, Layout), default=None,
                 only=wanted)
    out: list[Layout | None] = []
    for (path, leaf), s, given, w in zip(fl.items(), st, lo, wanted):
        if not w or not is_array(leaf):
            out.append(None)
            continue
        out.append(_one(path, tuple(leaf.shape), info.get(path), s, given))
    return out


def _one(path: str, shape: tuple[int, ...], info: LeafInfo | None, s: Any, given: Any) -> Layout:
    if s is not None and not _is_stacked_value(s):
        raise TypeError(
            f"stacked at leaf {path!r} must be None, an int or a tuple of ints, got {s!r}"
        )
    axes = None if s is None else tuple(sorted(_checks.axes(s, "stacked", len(shape), path=path)))
    if given is not None:
        if not isinstance(given, Layout):
            raise TypeError(
                f"layout at leaf {path!r} must be a jaxrm.tree.Layout or None, got "
                f"{type(given).__name__}"
            )
        if given.shape != shape:
            raise ValueError(
                f"layout at leaf {path!r} has shape {given.shape}, but the leaf has {shape}"
            )
        if axes is not None and axes != given.stacked:
            raise ValueError(
                f"stacked={s!r} and layout (stacked={given.stacked}) conflict at leaf {path!r}"
            )
        return given
    try:
        return infer(path, shape, info, axes)
    except ValueError as e:
        raise ValueError(f"stacked at leaf {path!r}: {e}") from None
