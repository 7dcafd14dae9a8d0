"""Rules for the ops that move axes around: reshape, concatenate/split, slice, gather.

A mixin of ``Walker`` (it uses ``self.graph``,
a ``Coupling``), with the helpers that describe an
equation in error messages.
"""

from __future__ import annotations

import numpy as np

from jaxrm.prune._coupling import _refine

__all__ = ["ShapeRules"]


def _where(eqn) -> str:
    try:
        from jax._src import source_info_util

        return " at " + source_info_util.summarize(eqn.source_info)
    except Exception:  # the location is a courtesy; never fail for it
        return ""


def _op(eqn) -> str:
    ins = ", ".join(str(getattr(v, "aval", "?").str_short()) for v in eqn.invars
                    if hasattr(getattr(v, "aval", None), "str_short"))
    outs = ", ".join(v.aval.str_short() for v in eqn.outvars)
    return f"`{eqn.primitive.name}` ({ins} -> {outs}){_where(eqn)}"


def _shape(v) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(v.aval, "shape", ()))


class ShapeRules:
    """Coupling rules for reshapes, concatenations, slices and gathers."""

    def _reshape(self, eqn, i_nodes, o_nodes, si, so) -> None:
        g = self.graph
        ins = [(n, s) for n, s in zip(i_nodes, si) if s != 1]
        outs = [(n, s) for n, s in zip(o_nodes, so) if s != 1]
        a = b = 0
        while a < len(ins) and b < len(outs):
            bi, bo = [ins[a]], [outs[b]]
            a, b = a + 1, b + 1
            pi, po = bi[0][1], bo[0][1]
            while pi != po:
                if pi < po:
                    bi.append(ins[a])
                    pi *= ins[a][1]
                    a += 1
                else:
                    bo.append(outs[b])
                    po *= outs[b][1]
                    b += 1
            if len(bi) == 1 and len(bo) == 1:
                g.union(bi[0][0], bo[0][0])
                continue
            refined = _refine("prod", [s for _, s in bi], [s for _, s in bo])
            if refined is None:
                for n, _ in [*bi, *bo]:
                    g.unresolve(n, f"it is reshaped across channel boundaries by {_op(eqn)}")
                continue
            left = self._pieces(bi, refined)
            right = self._pieces(bo, refined)
            for x, y in zip(left, right):
                g.union(x, y)

    def _pieces(self, dims, refined) -> list[int | None]:
        out, k = [], 0
        for node, size in dims:
            factors = []
            while int(np.prod(factors)) < size:
                factors.append(refined[k])
                k += 1
            out += self.graph.factor(node, "prod", factors)
        return out

    def _concat(self, dim, parts, whole, part_shapes) -> None:
        g = self.graph
        for nodes in parts:
            for d, (x, y) in enumerate(zip(nodes, whole)):
                if d != dim:
                    g.union(x, y)
        pieces = g.factor(whole[dim], "cat", [s[dim] for s in part_shapes])
        for nodes, piece in zip(parts, pieces):
            g.union(nodes[dim], piece)

    def _slice(self, eqn, i_nodes, o_nodes, si) -> None:
        g = self.graph
        p = eqn.params
        strides = p["strides"] or (1,) * len(si)
        bounds = zip(p["start_indices"], p["limit_indices"], strides, si)
        for d, (lo, hi, st, n) in enumerate(bounds):
            if lo == 0 and hi == n and st == 1:
                g.union(i_nodes[d], o_nodes[d])
            elif st == 1:
                pieces = g.factor(i_nodes[d], "cat", [lo, hi - lo, n - hi])
                g.union(pieces[1], o_nodes[d])
            else:
                g.unresolve(i_nodes[d], f"strided by {_op(eqn)}")
                g.unresolve(o_nodes[d], f"strided by {_op(eqn)}")

    def _gather(self, eqn, ins, outs, in_shapes, out_shapes) -> None:
        g = self.graph
        dn = eqn.params["dimension_numbers"]
        sizes = eqn.params["slice_sizes"]
        skipped = set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ()))
        kept = [d for d in range(len(in_shapes[0])) if d not in skipped]
        for d, o in zip(kept, dn.offset_dims):
            if d not in dn.start_index_map and sizes[d] == in_shapes[0][d]:
                g.union(ins[0][d], outs[0][o])
            else:
                g.unresolve(ins[0][d], f"indexed by {_op(eqn)}")
                g.unresolve(outs[0][o], f"indexed by {_op(eqn)}")
        for d in skipped:
            g.unresolve(ins[0][d], f"indexed by {_op(eqn)}")
        batch = [d for d in range(len(out_shapes[0])) if d not in set(dn.offset_dims)]
        for o, i in zip(batch, range(len(in_shapes[1]) - 1)):
            if out_shapes[0][o] == in_shapes[1][i]:
                g.union(outs[0][o], ins[1][i])
