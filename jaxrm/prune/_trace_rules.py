"""How each jaxpr primitive couples the axes of its operands and results.

``Walker`` visits a jaxpr equation by equation, giving every axis of
every value a node of a ``Coupling`` and joining
the nodes each primitive ties together. Calls (``jit``, ``custom_jvp_call``,
``checkpoint``, ...), ``cond`` and ``scan`` are walked into; a scan over
stacked parameters registers each parameter slice as its own layer.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from jax.extend import core as jcore

from jaxrm.prune._coupling import Coupling
from jaxrm.prune._trace_shapes import ShapeRules, _op, _shape

__all__ = ["Walker"]

_ELEMENTWISE = frozenset(
    """abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp
    conj convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc
    exp exp2 expm1 floor ge gt imag integer_pow is_finite le lgamma log log1p
    logistic lt max min mul ne neg nextafter not or pow real reduce_precision rem
    round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan tanh xor
    sharding_constraint mesh_cast""".split()
)
_REDUCE = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor "
    "argmax argmin".split()
)
_WINDOW = frozenset("reduce_window_sum reduce_window_max reduce_window_min reduce_window".split())
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())


def _sub_jaxpr(eqn):
    """The callee of a call-like equation (same operand and result counts), or None."""
    for value in eqn.params.values():
        if isinstance(value, jcore.ClosedJaxpr):
            jaxpr = value.jaxpr
        elif isinstance(value, jcore.Jaxpr):
            jaxpr = value
        else:
            continue
        if len(jaxpr.invars) == len(eqn.invars) and len(jaxpr.outvars) == len(eqn.outvars):
            return jaxpr
    return None


class Walker(ShapeRules):
    """Builds the coupling of one traced function.

    Attributes:
      graph: the ``Coupling``.
      members: ``(node, path, leaf_axis, scope)`` of every parameter axis;
        ``scope`` is 0, or the scan whose layer slices the leaf's axis 0.
      roles: ``path -> {"out": axes, "in": axes}`` seen at dot/conv operands.
      scans: scan id -> length.
    """

    def __init__(self) -> None:
        self.graph = Coupling()
        self.members: list[tuple[int, str, int, int]] = []
        self.roles: dict[str, dict[str, set[int]]] = {}
        self.scans: dict[int, int] = {}

    # -------------------------------------------------------------- helpers

    def nodes_for(self, shape, scope: int) -> list[int]:
        return [self.graph.new(s, scope) for s in shape]

    def _role(self, params: dict, var, axes, role: str) -> None:
        info = params.get(var) if not isinstance(var, jcore.Literal) else None
        if info is not None:
            path, offset = info
            entry = self.roles.setdefault(path, {"out": set(), "in": set()})
            entry[role].update(a + offset for a in axes)

    def _mark_all(self, nodes_lists, reason: str) -> None:
        for nodes in nodes_lists:
            for n in nodes:
                self.graph.unresolve(n, reason)

    def _same(self, a: list[int], b: list[int], sa, sb) -> None:
        """Joins equal-sized axes of two same-rank values (size-1 broadcasts stay apart)."""
        if len(sa) != len(sb):
            return
        for x, y, p, q in zip(a, b, sa, sb):
            if p == q and p != 1:
                self.graph.union(x, y)

    # ----------------------------------------------------------------- walk

    def walk(self, jaxpr, in_nodes, scope: int, params: dict) -> list[list[int]]:
        """Walks ``jaxpr`` with its inputs' nodes; returns its outputs' nodes.

        ``params`` maps the invars that are exactly a parameter leaf (or one
        layer slice of it) to ``(path, axis offset)``.
        """
        env: dict[Any, list[int]] = {}
        for v, nodes in zip(jaxpr.invars, in_nodes):
            env[v] = nodes
        for v in jaxpr.constvars:
            # An array the function closes over is a hidden parameter: shrink could
            # not remove its entries, so the channels it touches stay.
            env[v] = self.nodes_for(_shape(v), scope)
            for n in env[v]:
                self.graph.block(n, "a constant captured by the function")

        def read(v):
            if isinstance(v, jcore.Literal):
                return self.nodes_for(np.shape(v.val), scope)
            return env[v]

        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = [self.nodes_for(_shape(v), scope) for v in eqn.outvars]
            self.graph.describe = lambda eqn=eqn: _op(eqn)
            self.rule(eqn, ins, outs, scope, params)
            for v, nodes in zip(eqn.outvars, outs):
                env[v] = nodes
        return [read(v) for v in jaxpr.outvars]

    def rule(self, eqn, ins, outs, scope, params) -> None:
        name = eqn.primitive.name
        g = self.graph
        in_shapes = [_shape(v) for v in eqn.invars]
        out_shapes = [_shape(v) for v in eqn.outvars]
        p = eqn.params
        if name in _ELEMENTWISE:
            for o, so in zip(outs, out_shapes):
                for i, si in zip(ins, in_shapes):
                    self._same(o, i, so, si)
        elif name == "optimization_barrier":
            for i, o, si, so in zip(ins, outs, in_shapes, out_shapes):
                self._same(i, o, si, so)
        elif name == "broadcast_in_dim":
            for j, d in enumerate(p["broadcast_dimensions"]):
                if in_shapes[0][j] == out_shapes[0][d]:
                    g.union(ins[0][j], outs[0][d])
        elif name == "reshape":
            self._reshape(eqn, ins[0], outs[0], in_shapes[0], out_shapes[0])
        elif name == "squeeze":
            kept = [d for d in range(len(in_shapes[0])) if d not in set(
                d % len(in_shapes[0]) for d in p["dimensions"])]
            for d, o in zip(kept, outs[0]):
                g.union(ins[0][d], o)
        elif name == "transpose":
            for i, d in enumerate(p["permutation"]):
                g.union(outs[0][i], ins[0][d])
        elif name == "dot_general":
            self._dot(eqn, ins, outs, in_shapes, params)
        elif name == "conv_general_dilated":
            self._conv(eqn, ins, outs, in_shapes, params)
        elif name in _REDUCE:
            axes = set(p["axes"])
            rest = [d for d in range(len(in_shapes[0])) if d not in axes]
            for d in axes:
                g.block(ins[0][d], f"reduced by {_op(eqn)}")
            for d, o in zip(rest, outs[0]):
                g.union(ins[0][d], o)
        elif name in _WINDOW:
            n = len(in_shapes[0])
            pads = p.get("padding") or ((0, 0),) * n
            per_axis = zip(p["window_dimensions"], p["window_strides"], pads,
                           p.get("base_dilation") or (1,) * n, p.get("window_dilation") or (1,) * n)
            for d, (w, st, pad, bd, wd) in enumerate(per_axis):
                if (w, st, tuple(pad), bd, wd) == (1, 1, (0, 0), 1, 1):
                    for i, o in zip(ins[: len(outs)], outs):
                        g.union(i[d], o[d])
                else:
                    for nodes in [*ins, *outs]:
                        g.block(nodes[d], f"a pooling window of {_op(eqn)}")
        elif name in _CUMULATIVE:
            g.block(ins[0][p["axis"]], f"accumulated along by {_op(eqn)}")
            self._same(ins[0], outs[0], in_shapes[0], out_shapes[0])
        elif name == "sort":
            d = p["dimension"]
            for nodes in [*ins, *outs]:
                g.block(nodes[d], f"sorted by {_op(eqn)}")
            for a, b in itertools.combinations([*ins, *outs], 2):
                self._same(a, b, in_shapes[0], in_shapes[0])
        elif name == "concatenate":
            self._concat(p["dimension"], ins, outs[0], in_shapes)
        elif name == "split":
            self._concat(p["axis"], outs, ins[0], out_shapes)
        elif name == "slice":
            self._slice(eqn, ins[0], outs[0], in_shapes[0])
        elif name == "pad":
            for d, (lo, hi, interior) in enumerate(p["padding_config"]):
                if lo == hi == interior == 0:
                    g.union(ins[0][d], outs[0][d])
                else:
                    g.unresolve(ins[0][d], f"padded by {_op(eqn)}")
                    g.unresolve(outs[0][d], f"padded by {_op(eqn)}")
        elif name == "gather":
            self._gather(eqn, ins, outs, in_shapes, out_shapes)
        elif name in ("dynamic_slice", "dynamic_update_slice"):
            ref = in_shapes[1] if name == "dynamic_update_slice" else out_shapes[0]
            for d, (s, r) in enumerate(zip(in_shapes[0], ref)):
                pieces = [ins[0][d], outs[0][d]] + ([ins[1][d]] if name != "dynamic_slice" else [])
                if s == r:
                    for x in pieces[1:]:
                        g.union(pieces[0], x)
                else:
                    for x in pieces:
                        g.unresolve(x, f"indexed by {_op(eqn)}")
        elif name == "scan":
            self._scan(eqn, ins, outs, scope, params)
        elif name == "cond":
            for branch in p["branches"]:
                inner = {bv: params[v] for bv, v in zip(branch.jaxpr.invars, eqn.invars[1:])
                         if not isinstance(v, jcore.Literal) and v in params}
                res = self.walk(branch.jaxpr, ins[1:], scope, inner)
                for a, b in zip(res, outs):
                    for x, y in zip(a, b):
                        g.union(x, y)
        elif not any(ins_ for ins_ in ins):
            pass  # iota, random bits, constants: new values coupled to nothing
        else:
            sub = _sub_jaxpr(eqn)
            if sub is None:
                self._mark_all([*ins, *outs], f"it passes through {_op(eqn)}, which "
                               "prune.groups does not know")
                return
            inner = {sv: params[v] for sv, v in zip(sub.invars, eqn.invars)
                     if not isinstance(v, jcore.Literal) and v in params}
            res = self.walk(sub, ins, scope, inner)
            for a, b in zip(res, outs):
                for x, y in zip(a, b):
                    g.union(x, y)

    def _dot(self, eqn, ins, outs, in_shapes, params) -> None:
        g = self.graph
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        ln, rn, on = ins[0], ins[1], outs[0]
        for a, b in zip(lc, rc):
            g.union(ln[a], rn[b])
        for k, (a, b) in enumerate(zip(lb, rb)):
            g.union(ln[a], rn[b])
            g.union(ln[a], on[k])
        lfree = [d for d in range(len(ln)) if d not in lc and d not in lb]
        rfree = [d for d in range(len(rn)) if d not in rc and d not in rb]
        for j, d in enumerate([*lfree]):
            g.union(ln[d], on[len(lb) + j])
        for j, d in enumerate(rfree):
            g.union(rn[d], on[len(lb) + len(lfree) + j])
        for var, free, contract in ((eqn.invars[0], lfree, lc), (eqn.invars[1], rfree, rc)):
            self._role(params, var, free, "out")
            self._role(params, var, contract, "in")
        del in_shapes

    def _conv(self, eqn, ins, outs, in_shapes, params) -> None:
        g = self.graph
        p = eqn.params
        lhs, rhs, out = p["dimension_numbers"]
        ln, rn, on = ins[0], ins[1], outs[0]
        if p["batch_group_count"] != 1:
            self._mark_all([ln, rn, on], f"it passes through {_op(eqn)} with batch groups")
            return
        g.union(ln[lhs[0]], on[out[0]])
        for spec, nodes in ((lhs, ln), (rhs, rn), (out, on)):
            for d in spec[2:]:
                g.block(nodes[d], f"a convolution window of {_op(eqn)}")
        groups = p["feature_group_count"]
        if groups == 1:
            g.union(ln[lhs[1]], rn[rhs[1]])
            g.union(rn[rhs[0]], on[out[1]])
        else:
            c, o = in_shapes[0][lhs[1]], in_shapes[1][rhs[0]]
            ls = g.factor(ln[lhs[1]], "prod", [groups, c // groups])
            rs = g.factor(rn[rhs[0]], "prod", [groups, o // groups])
            os_ = g.factor(on[out[1]], "prod", [groups, o // groups])
            g.union(ls[0], rs[0])
            g.union(rs[0], os_[0])
            g.union(rn[rhs[1]] if in_shapes[1][rhs[1]] != 1 else None, ls[1])
            g.union(rs[1], os_[1])
        self._role(params, eqn.invars[1], [rhs[0]], "out")
        self._role(params, eqn.invars[1], [rhs[1]], "in")

    def _scan(self, eqn, ins, outs, scope, params) -> None:
        g = self.graph
        p = eqn.params
        body = p["jaxpr"].jaxpr
        nc, nk = p["num_consts"], p["num_carry"]
        s = len(self.scans) + 1
        self.scans[s] = int(p["length"])
        iteration = g.new(int(p["length"]), scope)
        g.block(iteration, f"the iteration axis of {_op(eqn)}")
        inner_params, body_in = {}, []
        for k, (v, bv, nodes) in enumerate(zip(eqn.invars, body.invars, ins)):
            if k < nc + nk:
                fresh = self.nodes_for(_shape(bv), s)
                for x, y in zip(fresh, nodes):
                    g.union(x, y)
                if k < nc and not isinstance(v, jcore.Literal) and v in params:
                    inner_params[bv] = params[v]
                body_in.append(fresh)
                continue
            fresh = self.nodes_for(_shape(bv), s)
            info = params.get(v) if not isinstance(v, jcore.Literal) else None
            if info is not None and info[1] == 0:
                # A stacked parameter: each layer slice is its own layer.
                inner_params[bv] = (info[0], 1)
                for a, n in enumerate(fresh):
                    self.members.append((n, info[0], a + 1, s))
            else:
                g.union(nodes[0], iteration)
                for x, y in zip(fresh, nodes[1:]):
                    g.union(x, y)
            body_in.append(fresh)
        res = self.walk(body, body_in, s, inner_params)
        for k in range(nk):
            for x, y, z in zip(res[k], body_in[nc + k], outs[k]):
                g.union(x, y)
                g.union(y, z)
        for r_nodes, o_nodes in zip(res[nk:], outs[nk:]):
            g.union(o_nodes[0], iteration)
            for x, y in zip(r_nodes, o_nodes[1:]):
                g.union(x, y)
