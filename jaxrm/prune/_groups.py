"""Coupled channel groups from the traced program (structural pruning, as in DepGraph).

``groups(fn, params, *args)`` traces ``fn(params, *args)`` to a jaxpr and
follows every axis through every equation (see ``_trace_rules``): a kernel's
output channel, its bias, the next normalisation's scale, shift and running
statistics, the next kernel's input axis, and all channels joined by residual
additions, concatenations and reshapes into heads land in one group, which
[`shrink`][jaxrm.prune.shrink] removes together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxrm import tree as jtree
from jaxrm.prune._trace_rules import Walker

__all__ = ["Group", "groups"]


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
    """Parameter axes whose channels must be removed together.

    Channel ``i`` of the group is, in each member ``(path, axis)``, the
    indices ``index[k][i]`` along that axis (one index for a plain channel;
    several for a head, which spans ``head_dim`` entries of a fused axis).

    Attributes:
      size: the number of channels (or heads) in the group.
      members: ``(leaf path, axis)`` pairs, in the parameters' flattening order.
      index: per member, an int array of shape ``(size, m)``: the positions
        along the member's axis that each channel occupies.
      roles: per member, ``"out"`` (a produced axis of a kernel), ``"in"`` (a
        contracted axis of a kernel) or ``"other"`` (bias, scale, statistics).
      layer: for a group inside a scanned stack of layers, the layer (the
        index along axis 0 of every member); ``None`` otherwise.
      outputs: ``leaf path -> produced axes`` of every kernel in the program,
        used by [`shrink`][jaxrm.prune.shrink] to report module sizes.
    """

    size: int
    members: tuple[tuple[str, int], ...]
    index: tuple[np.ndarray, ...] = dataclasses.field(repr=False)
    roles: tuple[str, ...] = dataclasses.field(repr=False)
    layer: int | None = None
    outputs: Mapping[str, tuple[int, ...]] = dataclasses.field(
        default_factory=dict, repr=False
    )

    def __repr__(self) -> str:
        at = "" if self.layer is None else f", layer={self.layer}"
        shown = ", ".join(f"{p}:{a}" for p, a in self.members)
        return f"Group(size={self.size}{at}, members=[{shown}])"


def _check_unresolved(unresolved: str, argument: str = "unresolved") -> None:
    if unresolved not in ("raise", "skip"):
        raise ValueError(f"{argument} must be 'raise' or 'skip', got {unresolved!r}")


def groups(
    fn: Callable[..., Any],
    params: Any,
    *args: Any,
    unresolved: str = "raise",
    **kwargs: Any,
) -> list[Group]:
    """Finds the coupled channel groups of ``params`` in ``fn(params, *args)``.

    ``fn`` is traced (never run) with ``jax.make_jaxpr``; pass the inference
    function, e.g. ``lambda v, x: model.apply(v, x, train=False)`` for Linen
    (with ``params`` the whole variables dict, so ``batch_stats`` are found
    too), ``lambda s, x: nnx.merge(graphdef, s)(x)`` for NNX, or
    ``lambda m, x: eqx.combine(m, static)(x)`` for Equinox. The axes of
    ``args`` and of the outputs are never in a group (a classifier's logits
    and the input features stay), nor are axes that a reduction sums over
    (a LayerNorm's features), a convolution's window, or a scan's iteration.

    Args:
      fn: a function of ``(params, *args, **kwargs)``.
      params: the parameter pytree (any structure; leaf paths name members).
      *args: example inputs (arrays or ``jax.ShapeDtypeStruct``).
      unresolved: ``"raise"`` (default): a parameter axis that reaches an op
        whose channel mapping cannot be followed (e.g. a reshape that mixes
        channels with spatial positions) raises; ``"skip"``: such axes are
        left out of every group.
      **kwargs: keyword arguments passed through to ``fn``.

    Returns:
      The groups, ordered by their first member's position in ``params``'
      flattening order; a scanned layer's groups come once per layer.

    Raises:
      ValueError: ``unresolved`` is unknown, or (with ``"raise"``) a coupling
        cannot be resolved; the message names the op, its source line and the
        leaf path and axis.
      TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    _check_unresolved(unresolved)
    closed = jax.make_jaxpr(lambda p, a: fn(p, *a, **kwargs))(params, args)
    leaves = jtree.leaves_with_paths(params)
    walker = Walker()
    g = walker.graph
    jaxpr = closed.jaxpr
    n_params = len(leaves)
    in_nodes, param_vars, origin = [], {}, set()
    for k, v in enumerate(jaxpr.invars):
        nodes = walker.nodes_for(tuple(v.aval.shape), 0)
        in_nodes.append(nodes)
        if k < n_params:
            path = leaves[k][0]
            param_vars[v] = (path, 0)
            for axis, n in enumerate(nodes):
                walker.members.append((n, path, axis, 0))
                origin.add(n)
        else:
            for n in nodes:
                g.block(n, "an input of the function")
    outs = walker.walk(jaxpr, in_nodes, 0, param_vars)
    for nodes in outs:
        for n in nodes:
            g.block(n, "an output of the function")
    for n, _, _, scope in walker.members:
        if scope:
            origin.add(n)
    return _collect(walker, origin, [p for p, _ in leaves], unresolved)


def _collect(walker: Walker, origin: set[int], order: list[str], unresolved: str) -> list[Group]:
    g = walker.graph
    blocked, bad = g.finish()
    computed = {g.find(n) for n in range(len(g.parent)) if n not in origin}
    scope_of: dict[int, set[int]] = {}
    for n in range(len(g.parent)):
        scope_of.setdefault(g.find(n), set()).add(g.scope[n])
    per_layer_paths = {path for _, path, _, scope in walker.members if scope}
    found: dict[int, list[tuple[str, int, np.ndarray, int]]] = {}
    for node, path, axis, scope in walker.members:
        if scope == 0 and path in per_layer_paths:
            continue  # the stacked leaf itself; its layers are members inside the scan
        start = np.arange(g.size[node])[:, None]
        for root, index in g.expand(node, start):
            if g.size[root] <= 1 or root in blocked:
                continue
            if root in bad:
                if unresolved == "raise" and root in computed:
                    raise ValueError(
                        f"prune.groups cannot resolve the coupling of leaf {path!r} axis "
                        f"{axis}: {bad[root]}. Its channels cannot be removed exactly; "
                        "pass unresolved='skip' to leave such axes out of every group."
                    )
                continue
            if root not in computed:
                continue
            found.setdefault(root, []).append((path, axis, index, scope))
    outputs = {p: tuple(sorted(r["out"])) for p, r in walker.roles.items() if r["out"]}
    rank = {p: i for i, p in enumerate(order)}
    result = []
    for root, entries in found.items():
        entries.sort(key=lambda e: (rank.get(e[0], len(rank)), e[1]))
        roles = tuple(_role(walker, p, a) for p, a, _, _ in entries)
        members = tuple((p, a) for p, a, _, _ in entries)
        index = tuple(i for _, _, i, _ in entries)
        scopes = scope_of[root]
        per_layer = 0 not in scopes and all(s for *_, s in entries)
        layers = range(walker.scans[min(scopes)]) if per_layer else [None]
        for layer in layers:
            result.append(Group(g.size[root], members, index, roles, layer, outputs))
    result.sort(key=lambda gr: (rank.get(gr.members[0][0], len(rank)), gr.members[0][1],
                                -1 if gr.layer is None else gr.layer))
    return result


def _role(walker: Walker, path: str, axis: int) -> str:
    r = walker.roles.get(path)
    if r is None:
        return "other"
    if axis in r["out"]:
        return "out"
    return "in" if axis in r["in"] else "other"
