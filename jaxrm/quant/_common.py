"""The quantizer loop and the argument checks every quantizer shares."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import _checks
from jaxrm import tree as jtree
from jaxrm.quant import _settings


def check_bits(bits: Any, lo: int, hi: int, argument: str = "bits", path: str | None = None) -> int:
    """Returns ``bits`` as an int, raising unless it is an integer in ``[lo, hi]``."""
    return _checks.integer(bits, argument, minimum=lo, maximum=hi, path=path)


def is_int_like(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def check_leaf(path: str, leaf: Any, where: Any) -> None:
    """Raises unless ``leaf`` is a floating array (integer leaves cannot be quantized)."""
    if not jtree.is_array(leaf):
        raise TypeError(
            f"params leaf {path!r} is a {type(leaf).__name__}, not an array; "
            f"where={where!r} must select only array leaves"
        )
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
        raise TypeError(
            f"params leaf {path!r} has dtype {leaf.dtype}; only floating leaves can be "
            f"quantized (where={where!r} selected it)"
        )


def is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_finite(path: str, leaf: Any, argument: str = "params") -> None:
    """Raises on NaN/Inf in a concrete leaf (traced leaves are not checked)."""
    if isinstance(leaf, np.ndarray):
        # min and max propagate NaN and hold any Inf: two reductions in place of
        # a copy to the device and a boolean array of the leaf's size
        if leaf.size == 0 or (np.isfinite(leaf.min()) and np.isfinite(leaf.max())):
            return
        bad = int(np.count_nonzero(~np.isfinite(leaf)))
        raise ValueError(f"{argument} leaf {path!r} has {bad} NaN or Inf entries")
    if is_concrete(leaf) and not bool(jnp.all(jnp.isfinite(leaf))):
        bad = int(jnp.sum(~jnp.isfinite(leaf)))
        raise ValueError(f"{argument} leaf {path!r} has {bad} NaN or Inf entries")


def check_axis(path: str, leaf: Any, axis: Any, argument: str = "axis") -> int | None:
    """Returns ``axis`` normalized to ``[0, ndim)``, or ``None``."""
    if axis is None:
        return None
    if not _checks.is_int(axis):
        raise TypeError(f"{argument}{_checks.at(path)} must be None or an int, got {axis!r}")
    ndim = len(leaf.shape)
    if not -ndim <= int(axis) < ndim:
        raise ValueError(
            f"{argument}={int(axis)} is out of range for leaf {path!r} of shape {tuple(leaf.shape)}"
        )
    return int(axis) % ndim


def check_choice(value: Any, choices: tuple[str, ...], argument: str) -> str:
    return _checks.choice(value, argument, choices)


def is_bits_like(x: Any) -> bool:
    return x is None or is_int_like(x)


def check_nonempty(path: str, leaf: Any, argument: str = "params") -> None:
    if int(np.prod(leaf.shape)) == 0:
        raise ValueError(
            f"{argument} leaf {path!r} has shape {tuple(leaf.shape)} with no entries; "
            "it cannot be quantized (leave it out of `where`)"
        )


@dataclasses.dataclass(frozen=True)
class Target:
    """One leaf a quantizer will transform, with its resolved per-leaf settings."""

    path: str
    leaf: Any
    bits: int
    axes: _settings.Axes
    settings: dict[str, Any]


def targets(
    params: Any,
    where: jtree.Where,
    *,
    bits: Any,
    bits_range: tuple[int, int],
    settings: dict[str, tuple[Any, Callable[[Any], bool]]] | None = None,
    stacked: Any = None,
    finite: bool = True,
    nonempty: bool = True,
) -> list[Target]:
    """Resolves and validates every selected leaf before any is transformed.

    The loop every quantizer runs (``uniform``, ``fake_quant_tree``,
    ``kmeans``): the selection, ``bits`` and the other per-leaf ``settings``
    (``name -> (setting, is_scalar)``) through the one resolver, the layout's
    stacked/out/contract axes, and the leaf checks. A leaf whose ``bits`` is
    ``None`` is left out.

    Raises:
      ValueError / TypeError: naming the argument and the leaf path.
    """
    if bits is None:
        raise TypeError("bits must be an int (or a per-leaf setting of ints), got None")
    chosen = jtree.selected(params, where)
    only = set(chosen)
    bits_of = _settings.resolve(bits, params, argument="bits", is_scalar=is_bits_like, only=only)
    resolved = {
        name: _settings.resolve(value, params, argument=name, is_scalar=scalar, only=only)
        for name, (value, scalar) in (settings or {}).items()
    }
    axes = _settings.axes_of(params, stacked, only)
    leaves = dict(_settings.leaf_paths(params))
    out = []
    for path in chosen:
        b = bits_of[path]
        if b is None:
            continue
        b = check_bits(b, *bits_range, "bits", path)
        leaf = leaves[path]
        check_leaf(path, leaf, where)
        if nonempty:
            check_nonempty(path, leaf)
        if finite:
            check_finite(path, leaf)
        extra = {name: r[path] for name, r in resolved.items()}
        out.append(Target(path, leaf, b, axes.get(path, _settings.Axes()), extra))
    return out


def grid_targets(
    params: Any, where: jtree.Where, bits: Any, axis: Any, stacked: Any,
    is_axis: Callable[[Any], bool] | None = None, **kw: Any,
) -> list[Target]:
    """``targets`` for the uniform grids (2 to 16 bits, a per-leaf ``axis``)."""
    settings = {"axis": (axis, is_axis or is_axis_like), **kw.pop("settings", {})}
    return targets(
        params, where, bits=bits, bits_range=(2, 16), settings=settings, stacked=stacked, **kw
    )


def rebuild(params: Any, where: jtree.Where, new: dict[str, Any]) -> Any:
    """``params`` with the leaves in ``new`` (by path) replaced."""
    return jtree.map_selected(lambda p, x: new.get(p, x), params, where)


def is_axis_like(x: Any) -> bool:
    return x is None or is_int_like(x)


def masks_by_path(params: Any, masks: Any) -> Callable[[str, Any], Any]:
    """``(path, leaf) -> bool mask or None`` from a masks pytree of ``params``' structure."""
    if masks is None:
        return lambda path, leaf: None
    table = dict(zip(jtree.paths(params), jtree.aligned(params, masks, "masks")))

    def mask_of(path: str, leaf: Any) -> Any:
        m = table.get(path)
        if m is None:
            return None
        if not jtree.is_array(m) or m.dtype != np.bool_:
            raise TypeError(
                f"masks at leaf {path!r} must be a bool array or None, got "
                f"{getattr(m, 'dtype', type(m).__name__)}"
            )
        # device_put copies a numpy mask without compiling (jnp.asarray compiles per shape)
        return jax.device_put(m) if isinstance(m, np.ndarray) else jnp.asarray(m)

    return mask_of
