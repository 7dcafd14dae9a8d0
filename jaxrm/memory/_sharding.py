"""Device meshes, path-based sharding rules, FSDP, and per-device byte counts."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxrm.tree import is_array, path_str

__all__ = ["Rules", "data_sharding", "fsdp", "mesh", "per_device_bytes", "rules", "shard"]


def mesh(*, devices: Sequence[Any] | None = None, **axis_sizes: int) -> Mesh:
    """Returns a device mesh with the given named axes, e.g. ``mesh(data=2, fsdp=4)``.

    Args:
      devices: the devices to arrange (default: all of ``jax.devices()``, which
        spans every process in a multi-process run).
      **axis_sizes: axis name -> size, in mesh order; one size may be ``-1``,
        meaning whatever the other sizes leave.

    Returns:
      A ``jax.sharding.Mesh`` with ``Auto`` axes (shardings propagate through
      ``jax.jit`` as usual).

    Raises:
      ValueError: no axes, a non-positive size, more than one ``-1``, or sizes
        whose product is not the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not axis_sizes:
        raise ValueError("mesh needs at least one axis, e.g. mesh(data=8)")
    sizes = dict(axis_sizes)
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"mesh axis {name}={size!r} must be a positive integer or -1")
    free = [n for n, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {free}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if len(devices) % known:
            raise ValueError(
                f"mesh axes {axis_sizes} do not divide the {len(devices)} devices"
            )
        sizes[free[0]] = len(devices) // known
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(
            f"mesh axes {axis_sizes} multiply to {math.prod(sizes.values())}, but there are "
            f"{len(devices)} devices; the sizes must multiply to the device count"
        )
    names = tuple(sizes)
    return jax.make_mesh(
        tuple(sizes.values()), names, axis_types=(AxisType.Auto,) * len(names), devices=devices
    )


def _check_spec_entries(spec: PartitionSpec, argument: str) -> None:
    for entry in spec:
        ok = entry is None or isinstance(entry, str) or (
            isinstance(entry, tuple) and all(isinstance(a, str) for a in entry)
        )
        if not ok:
            raise TypeError(
                f"{argument}: a PartitionSpec entry must be None, an axis name or a tuple of "
                f"axis names, got {entry!r}"
            )


def _axes(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _check_fits(path: str, shape: Sequence[int], spec: PartitionSpec, mesh: Mesh,
                argument: str) -> None:
    if len(spec) > len(shape):
        raise ValueError(
            f"{argument}: spec {spec} for leaf {path!r} has {len(spec)} entries but the leaf "
            f"has shape {tuple(shape)}"
        )
    used: list[str] = []
    for dim, entry in enumerate(spec):
        axes = _axes(entry)
        for a in axes:
            if a not in mesh.shape:
                raise ValueError(
                    f"{argument}: spec {spec} for leaf {path!r} names axis {a!r}, which the "
                    f"mesh does not have (axes: {list(mesh.shape)})"
                )
            if a in used:
                raise ValueError(f"{argument}: spec {spec} for leaf {path!r} uses axis {a!r} twice")
            used.append(a)
        parts = math.prod(mesh.shape[a] for a in axes)
        if shape[dim] % parts:
            raise ValueError(
                f"{argument}: leaf {path!r} of shape {tuple(shape)} cannot be split: dimension "
                f"{dim} (size {shape[dim]}) is not divisible by {parts} (axes {axes} of {spec})"
            )


class Rules:
    """Maps leaf paths to ``PartitionSpec``\\ s: the first matching regex wins.

    Build with [`rules`][jaxrm.memory.rules]. ``rules_obj.specs(tree)`` gives a pytree of
    specs; ``rules_obj(tree, mesh)`` a pytree of ``NamedSharding``\\ s checked
    against the leaves' shapes. Unmatched leaves are replicated (``P()``).
    """

    def __init__(self, pairs: Iterable[tuple[str, PartitionSpec]]):
        self._pairs: list[tuple[re.Pattern[str], PartitionSpec]] = []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise TypeError(f"rules[{i}] must be a (regex, PartitionSpec) pair, got {pair!r}")
            pattern, spec = pair
            if not isinstance(pattern, str):
                raise TypeError(f"rules[{i}]: the pattern must be a string, got {pattern!r}")
            try:
                compiled = re.compile(pattern)
            except re.error as e:
                raise ValueError(
                    f"rules[{i}]: {pattern!r} is not a valid regular expression: {e}"
                ) from e
            if spec is None:
                spec = PartitionSpec()
            if isinstance(spec, tuple) and not isinstance(spec, PartitionSpec):
                spec = PartitionSpec(*spec)
            if not isinstance(spec, PartitionSpec):
                raise TypeError(
                    f"rules[{i}]: the spec must be a jax.sharding.PartitionSpec, got {spec!r}"
                )
            _check_spec_entries(spec, f"rules[{i}]")
            self._pairs.append((compiled, spec))

    def spec_for(self, path: str) -> PartitionSpec:
        """Returns the spec of the first rule whose regex is found in ``path``."""
        for pattern, spec in self._pairs:
            if pattern.search(path):
                return spec
        return PartitionSpec()

    def specs(self, tree: Any) -> Any:
        """Returns a pytree of ``PartitionSpec``\\ s with ``tree``'s structure."""
        return jax.tree_util.tree_map_with_path(lambda kp, _: self.spec_for(path_str(kp)), tree)

    def __call__(self, tree: Any, mesh: Mesh) -> Any:
        """Returns ``NamedSharding``\\ s for ``tree``'s leaves on ``mesh``.

        Raises:
          ValueError: a spec names an axis the mesh lacks, has more entries
            than the leaf has dimensions, or does not divide a dimension (the
            message names the leaf path).
        """

        def one(kp, leaf):
            path, spec = path_str(kp), self.spec_for(path_str(kp))
            _check_fits(path, np.shape(leaf) if not is_array(leaf) else leaf.shape, spec, mesh,
                        "rules")
            return NamedSharding(mesh, spec)

        return jax.tree_util.tree_map_with_path(one, tree)

    def __repr__(self) -> str:
        return "Rules([" + ", ".join(f"({p.pattern!r}, {s})" for p, s in self._pairs) + "])"


def rules(pairs: Iterable[tuple[str, PartitionSpec]]) -> Rules:
    """Returns path-based sharding rules: ``[(regex, PartitionSpec), ...]``.

    Each leaf takes the spec of the first rule whose regular expression is
    found (``re.search``) in its path; unmatched leaves are replicated. Apply
    with ``rules_obj(tree, mesh)`` (shardings) or ``rules_obj.specs(tree)``.

    Example::

        r = memory.rules([(r"kernel$", P(None, "model")), (r"embed", P("model", None))])
        params = memory.shard(params, r(params, mesh))

    Args:
      pairs: ``(regex, spec)`` pairs; a spec is a ``PartitionSpec``, a tuple
        of its entries, or ``None`` (replicated).

    Returns:
      A [`Rules`][jaxrm.memory.Rules].

    Raises:
      ValueError: an invalid regular expression (naming ``rules[i]``).
      TypeError: a pair or spec of the wrong type.
    """
    return Rules(pairs)


def _axis_tuple(mesh: Mesh, axis: str | Sequence[str], argument: str = "axis") -> tuple[str, ...]:
    axes = (axis,) if isinstance(axis, str) else tuple(axis)
    if not axes or not all(isinstance(a, str) for a in axes):
        raise TypeError(f"{argument} must be a mesh axis name or a tuple of names, got {axis!r}")
    for a in axes:
        if a not in mesh.shape:
            raise ValueError(f"{argument}={axis!r}: the mesh has no axis {a!r} "
                             f"(axes: {list(mesh.shape)})")
    return axes


def fsdp(
    tree: Any,
    mesh: Mesh,
    *,
    axis: str | Sequence[str] = "fsdp",
    min_bytes: int = 1 << 16,
) -> Any:
    """Returns shardings that split each large leaf over the ``axis`` devices.

    Fully sharded data parallelism (ZeRO-3): each leaf of at least
    ``min_bytes`` is split along its largest dimension divisible by the axis
    size (the first such on ties); smaller leaves, scalars and leaves with no
    divisible dimension are replicated. Works for any pytree: parameters,
    optax states, jaxrm pruning masks, quantized leaves' arrays.

    Args:
      tree: a pytree of arrays or ``jax.ShapeDtypeStruct``.
      mesh: the device mesh.
      axis: the mesh axis (or tuple of axes, split jointly) to shard over.
      min_bytes: leaves smaller than this stay replicated.

    Returns:
      A pytree of ``NamedSharding`` with ``tree``'s structure.

    Raises:
      ValueError: ``axis`` is not an axis of ``mesh``, or ``min_bytes < 0``.
      TypeError: ``mesh`` is not a ``jax.sharding.Mesh``.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    axes = _axis_tuple(mesh, axis)
    if isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 0:
        raise ValueError(f"min_bytes must be a non-negative integer, got {min_bytes!r}")
    parts = math.prod(mesh.shape[a] for a in axes)
    entry = axes[0] if len(axes) == 1 else axes

    def one(leaf):
        shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
        dtype = np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype))
        size = math.prod(shape) * dtype.itemsize
        if size < min_bytes or not shape or parts == 1:
            return NamedSharding(mesh, PartitionSpec())
        dims = [d for d in range(len(shape)) if shape[d] % parts == 0]
        if not dims:
            return NamedSharding(mesh, PartitionSpec())
        best = max(dims, key=lambda d: (shape[d], -d))
        spec = [None] * len(shape)
        spec[best] = entry
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(one, tree)


def data_sharding(mesh: Mesh, axes: str | Sequence[str] | None = None) -> NamedSharding:
    """Returns the sharding of a batch split along its first dimension.

    Args:
      mesh: the device mesh.
      axes: the mesh axes the batch is split over (default: all of them, so
        each device gets ``batch / mesh.size`` examples, as in DP + FSDP).

    Returns:
      ``NamedSharding(mesh, P(axes))``, usable for every leaf of a batch.

    Raises:
      ValueError: an axis the mesh does not have.
    """
    names = tuple(mesh.axis_names) if axes is None else _axis_tuple(mesh, axes, "axes")
    return NamedSharding(mesh, PartitionSpec(names if len(names) > 1 else names[0]))


def shard(tree: Any, shardings: Any) -> Any:
    """Places ``tree``'s leaves on devices with the given shardings.

    Every leaf must hold the same global value on every process; in a
    multi-process run each process keeps only its devices' pieces.

    Args:
      tree: a pytree of arrays.
      shardings: one ``jax.sharding.Sharding`` for all leaves, or a pytree of
        them with ``tree``'s structure (e.g. from [`fsdp`][jaxrm.memory.fsdp] or a
        [`Rules`][jaxrm.memory.Rules]).

    Returns:
      A pytree of ``jax.Array`` with ``tree``'s structure.

    Raises:
      ValueError: ``shardings`` does not match ``tree``'s structure, or a
        sharding does not divide a leaf (naming the leaf path).
      TypeError: a sharding is not a ``jax.sharding.Sharding``.
    """
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    s_leaves, s_def = jax.tree_util.tree_flatten(
        shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
    )
    if len(s_leaves) != len(leaves):
        raise ValueError(
            f"shardings has {len(s_leaves)} leaves but tree has {len(leaves)}; build it from the "
            "same tree (memory.fsdp(tree, mesh) or rules(tree, mesh))"
        )
    try:
        s_leaves = treedef.flatten_up_to(jax.tree_util.tree_unflatten(s_def, s_leaves))
    except (ValueError, TypeError) as e:
        raise ValueError(f"shardings does not have the structure of tree: {e}") from e
    out = []
    for (kp, leaf), s in zip(leaves, s_leaves):
        path = path_str(kp)
        if not isinstance(s, jax.sharding.Sharding):
            raise TypeError(f"shardings at leaf {path!r} is {type(s).__name__}, not a Sharding")
        shape = tuple(np.shape(leaf))
        if isinstance(s, NamedSharding):
            _check_fits(path, shape, s.spec, s.mesh, "shardings")
        if s.is_fully_addressable:
            out.append(jax.device_put(leaf, s))
        else:
            host = np.asarray(leaf)
            out.append(jax.make_array_from_callback(shape, s, lambda idx, h=host: h[idx]))
    return jax.tree_util.tree_unflatten(treedef, out)


def _slice_size(shape: Sequence[int], index: tuple[slice, ...]) -> int:
    n = 1
    for size, sl in zip(shape, index):
        start, stop, step = sl.indices(size)
        n *= len(range(start, stop, step))
    return n


def per_device_bytes(tree: Any) -> dict[Any, int]:
    """Returns the bytes each (addressable) device holds of ``tree``.

    A replicated leaf counts in full on every device; a sharded leaf counts
    its shard. Also works on ``jax.ShapeDtypeStruct`` leaves that carry a
    ``sharding`` (planning without allocating).

    Args:
      tree: a pytree of ``jax.Array`` (or sharded ``jax.ShapeDtypeStruct``).

    Returns:
      ``{device: bytes}`` over the devices this process can address, in
      device-id order.

    Raises:
      TypeError: a leaf is not on a device (e.g. a numpy array), naming its path.
    """
    totals: dict[Any, int] = {}
    for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        sharding = getattr(leaf, "sharding", None)
        if not isinstance(sharding, jax.sharding.Sharding):
            raise TypeError(
                f"leaf {path_str(kp)!r} ({type(leaf).__name__}) is not placed on devices; "
                "use memory.shard or jax.device_put first"
            )
        shape = tuple(leaf.shape)
        item = np.dtype(leaf.dtype).itemsize
        for device, index in sharding.addressable_devices_indices_map(shape).items():
            totals[device] = totals.get(device, 0) + _slice_size(shape, index) * item
    return dict(sorted(totals.items(), key=lambda kv: kv[0].id))
