"""Union-find over array axes, with axes made of sub-axes (reshapes, concatenations).

Every axis of every value in a traced program is a node. Two nodes are joined
when channel ``i`` of one must be removed together with channel ``i`` of the
other (an elementwise add, a contraction, a bias broadcast). An axis that a
reshape splits (``features -> heads x head_dim``) or a concatenation assembles
(``[a; b]``) gets a *structure*: a ``"prod"`` (row-major factors, outermost
first) or ``"cat"`` (consecutive segments) of child nodes, shared by its whole
class. The groups are the classes without structure ("atomic") that hold a
parameter axis and are neither blocked (a function input or output, a
reduction, a convolution window) nor unresolved (an op whose channel mapping
is not an identity, a product or a concatenation).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Coupling"]


class Coupling:
    """Nodes (axes) with union-find classes, structures and block marks."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.scope: list[int] = []
        self.struct: dict[int, tuple[str, list[int]]] = {}
        self.blocked: dict[int, str] = {}
        self.unresolved: dict[int, str] = {}
        self.describe = lambda: "an op"  # names the op being walked, for messages

    # ------------------------------------------------------------------ nodes

    def new(self, size: int, scope: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.scope.append(scope)
        return len(self.parent) - 1

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def block(self, x: int | None, reason: str) -> None:
        if x is not None:
            self.blocked.setdefault(self.find(x), reason)

    def unresolve(self, x: int | None, reason: str) -> None:
        if x is not None:
            self.unresolved.setdefault(self.find(x), reason)

    # ------------------------------------------------------------------ union

    def union(self, a: int | None, b: int | None) -> None:
        if a is None or b is None:
            return
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            reason = f"axes of sizes {self.size[ra]} and {self.size[rb]} meet in {self.describe()}"
            self.unresolve(ra, reason)
            self.unresolve(rb, reason)
            return
        self.parent[rb] = ra
        for marks in (self.blocked, self.unresolved):
            if rb in marks:
                marks.setdefault(ra, marks.pop(rb))
        sb = self.struct.pop(rb, None)
        if sb is not None:
            sa = self.struct.get(ra)
            if sa is None:
                self.struct[ra] = sb
            else:
                self._unify(ra, sa, sb)

    def _sizes(self, children: list[int]) -> list[int]:
        return [self.size[self.find(c)] for c in children]

    def _unify(self, root: int, sa: tuple[str, list[int]], sb: tuple[str, list[int]]) -> None:
        (ka, ca), (kb, cb) = sa, sb
        if ka == kb and self._sizes(ca) == self._sizes(cb):
            for x, y in zip(ca, cb):
                self.union(x, y)
            return
        if ka == kb:
            refined = _refine(ka, self._sizes(ca), self._sizes(cb))
            if refined is not None:
                ra, rb = self._split_all(ka, ca, refined), self._split_all(kb, cb, refined)
                self.struct[self.find(root)] = (ka, ra)
                for x, y in zip(ra, rb):
                    self.union(x, y)
                return
        reason = (f"{self.describe()} makes an axis both {ka}{self._sizes(ca)} and "
                  f"{kb}{self._sizes(cb)}")
        self.unresolve(root, reason)
        for c in [*ca, *cb]:
            self.unresolve(c, reason)

    def _split_all(self, kind: str, children: list[int], refined: list[int]) -> list[int]:
        """Splits each child into the pieces of ``refined`` it spans."""
        out, i = [], 0
        for c in children:
            need, pieces = self.size[self.find(c)], []
            while (math.prod(pieces) if kind == "prod" else sum(pieces)) < need:
                pieces.append(refined[i])
                i += 1
            out += [p for p in self.factor(c, kind, pieces) if p is not None]
        return out

    def factor(self, x: int, kind: str, sizes: list[int]) -> list[int | None]:
        """Gives ``x``'s class the structure ``kind`` of ``sizes``; returns the children.

        The list is aligned with ``sizes``: ``None`` for a size-1 factor or an
        empty segment (they hold no channel), ``x`` itself if only one piece
        is left.
        """
        empty = 1 if kind == "prod" else 0
        real = [s for s in sizes if s != empty]
        if len(real) <= 1:
            return [x if s != empty else None for s in sizes]
        r = self.find(x)
        children = [self.new(s, self.scope[r]) for s in real]
        existing = self.struct.get(r)
        if existing is None:
            self.struct[r] = (kind, children)
        else:
            self._unify(r, existing, (kind, children))
        it = iter(children)
        return [next(it) if s != empty else None for s in sizes]

    # ------------------------------------------------------------ resolution

    def finish(self) -> tuple[dict[int, str], dict[int, str]]:
        """Propagates marks: a block goes down to sub-axes, an unresolved mark
        to the whole structure it touches. Returns ``(blocked, unresolved)`` by root."""
        children: dict[int, list[int]] = {}
        for r, (_, ch) in self.struct.items():
            children[self.find(r)] = [self.find(c) for c in ch]
        neighbours: dict[int, list[int]] = {}
        for r, ch in children.items():
            for c in ch:
                neighbours.setdefault(r, []).append(c)
                neighbours.setdefault(c, []).append(r)
        blocked = _spread({self.find(r): w for r, w in self.blocked.items()}, children)
        unresolved = _spread({self.find(r): w for r, w in self.unresolved.items()}, neighbours)
        return blocked, unresolved

    def expand(self, x: int, positions: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """The atomic classes under node ``x`` and, for each, the positions it owns.

        ``positions`` has shape ``(size(x), m)``: the indices along the leaf axis
        that channel ``i`` of ``x`` occupies. Each result has shape ``(size, m')``.
        """
        r = self.find(x)
        if r not in self.struct:
            return [(r, positions)]
        kind, ch = self.struct[r]
        sizes = self._sizes(ch)
        out = []
        if kind == "prod":
            grid = positions.reshape(*sizes, positions.shape[-1])
            for j, c in enumerate(ch):
                out += self.expand(c, np.moveaxis(grid, j, 0).reshape(sizes[j], -1))
        else:
            offset = 0
            for c, s in zip(ch, sizes):
                out += self.expand(c, positions[offset : offset + s])
                offset += s
        return out


def _spread(marks: dict[int, str], edges: dict[int, list[int]]) -> dict[int, str]:
    """Extends ``marks`` along ``edges`` to everything reachable (keeping the reason)."""
    stack = list(marks)
    while stack:
        r = stack.pop()
        for c in edges.get(r, ()):
            if c not in marks:
                marks[c] = marks[r]
                stack.append(c)
    return marks


def _refine(kind: str, a: list[int], b: list[int]) -> list[int] | None:
    """The coarsest common refinement of two factorizations (or segmentations), or None."""
    if kind == "cat":
        cuts = sorted(set(np.cumsum(a).tolist()) | set(np.cumsum(b).tolist()))
        return [int(y - x) for x, y in zip([0, *cuts[:-1]], cuts)]
    cuts = sorted(set(np.cumprod(a).tolist()) | set(np.cumprod(b).tolist()))
    out, prev = [], 1
    for c in cuts:
        if c % prev:
            return None
        out.append(int(c // prev))
        prev = c
    return out
