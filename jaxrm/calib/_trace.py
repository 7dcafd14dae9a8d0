"""A jaxpr interpreter that finds every matmul and convolution fed by a parameter.

``fn(params, batch)`` is traced to a jaxpr once per batch shape; this module
evaluates that jaxpr equation by equation. Beside each value it carries, for
values that are *views* of a selected parameter leaf (the leaf itself, a cast,
reshape, transpose, slice, squeeze or broadcast of it, or its slice inside a
``scan`` body), an integer array of the view's shape holding the flat index of
each entry in the leaf. When such a view meets a ``dot_general`` or
``conv_general_dilated``, that index array says which leaf axes are contracted
(the layer's input features), which are output channels, which are fixed (a
slice of a stacked leaf, e.g. one layer of ``nn.scan``), and where each
contracted position sits in the leaf's own input-feature order. The other
operand (the activation) is then flattened to rows of input features (im2col
patches for a convolution) and its statistics are accumulated.

This works the same for Flax Linen, Flax NNX and Equinox because it reads the
computation, not the module system. ``scan`` equations whose inputs hold a
parameter view are unrolled so each iteration records its own slice; other
control flow (``while``, ``cond``) is evaluated as is and its matmuls are not
recorded (they are reported as skipped).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

_IDENTITY = {
    "convert_element_type",
    "copy",
    "copy_p",
    "sharding_constraint",
    "mesh_cast",
    "reshard",
    "optimization_barrier_p",
}
_CALLS = {"jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint", "remat"}
_CUSTOM = {"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"}


@dataclasses.dataclass(frozen=True)
class Use:
    """Static facts about one recorded use of a leaf (found while tracing)."""

    leaf: int
    kind: str  # "dense" | "conv"
    stacked: tuple[int, ...]
    contract: tuple[int, ...]
    out: tuple[int, ...]
    slice_index: int


class Tracer:
    """Evaluates a closed jaxpr, recording statistics of parameter-fed matmuls.

    Attributes:
      uses: list of ``(Use, stats)`` where ``stats`` is a tuple of traced arrays
        ``(H, abs_sum, abs_max, rows)`` for that use.
      skipped: human-readable notes on parameter views that met an op whose
        statistics are not recorded.
    """

    def __init__(self, shapes: dict[int, tuple[int, ...]], names: dict[int, str]):
        self.shapes = shapes  # leaf id -> leaf shape, for tracked leaves
        self.names = names
        self.uses: list[tuple[Use, tuple]] = []
        self.skipped: list[str] = []

    # -- evaluation -----------------------------------------------------------------

    def run(self, jaxpr: jcore.Jaxpr, consts, args, provs):
        env: dict[Any, Any] = {}
        prov: dict[Any, Any] = {}

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        def read_prov(v):
            return None if isinstance(v, jcore.Literal) else prov.get(v)

        for v, x in zip(jaxpr.constvars, consts):
            env[v] = x
        for v, x, p in zip(jaxpr.invars, args, provs):
            env[v] = x
            if p is not None:
                prov[v] = p
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            inprovs = [read_prov(v) for v in eqn.invars]
            outs, outprovs = self.eqn(eqn, invals, inprovs)
            for v, x, p in zip(eqn.outvars, outs, outprovs):
                if isinstance(v, jcore.DropVar):
                    continue
                env[v] = x
                if p is not None:
                    prov[v] = p
        return [read(v) for v in jaxpr.outvars], [read_prov(v) for v in jaxpr.outvars]

    def eqn(self, eqn, invals, inprovs):
        name = eqn.primitive.name
        tracked = any(p is not None for p in inprovs)
        if tracked and name == "scan":
            return self.scan(eqn, invals, inprovs)
        if tracked and (name in _CALLS or name in _CUSTOM):
            sub = _sub_jaxpr(eqn)
            if sub is not None:
                jaxpr, consts = sub
                return self.run(jaxpr, consts, invals, inprovs)
        outs = _bind(eqn, invals)
        if not tracked:
            return outs, [None] * len(outs)
        if name == "dot_general":
            self.dot(eqn, invals, inprovs)
            return outs, [None]
        if name == "conv_general_dilated":
            self.conv(eqn, invals, inprovs)
            return outs, [None]
        p = inprovs[0]
        if p is not None and all(q is None for q in inprovs[1:]):
            idx = _view(name, eqn.params, p[1], invals)
            if idx is not None:
                return outs, [(p[0], idx)]
        if name in ("while", "cond"):
            for q in inprovs:
                if q is not None:
                    self.skipped.append(f"{self.names[q[0]]!r} used inside {name}")
        return outs, [None] * len(outs)

    def scan(self, eqn, invals, inprovs):
        prm = eqn.params
        nc, ncar, length = prm["num_consts"], prm["num_carry"], prm["length"]
        body = prm["jaxpr"]
        consts, carry, xs = invals[:nc], invals[nc : nc + ncar], invals[nc + ncar :]
        cprov, xprov = inprovs[:nc], inprovs[nc + ncar :]
        ys = []
        order = range(length - 1, -1, -1) if prm["reverse"] else range(length)
        for i in order:
            x_i = [x[i] for x in xs]
            p_i = [None if p is None else (p[0], p[1][i]) for p in xprov]
            outs, _ = self.run(
                body.jaxpr, body.consts, [*consts, *carry, *x_i], [*cprov, *[None] * ncar, *p_i]
            )
            carry, y = outs[:ncar], outs[ncar:]
            ys.append(y)
        if prm["reverse"]:
            ys = ys[::-1]
        n_ys = len(eqn.outvars) - ncar
        stacked = [jnp.stack([y[k] for y in ys]) for k in range(n_ys)]
        return [*carry, *stacked], [None] * len(eqn.outvars)

    # -- recording ------------------------------------------------------------------

    def _use(self, leaf, idx, w_contract, w_free, kind):
        """Classifies leaf axes from the view's index array.

        Returns ``(Use, feat, d_in)`` where ``feat[j]`` is the leaf's input-feature
        index of the view's ``j``-th contracted position, or ``None`` (skipped).
        """
        shape = self.shapes[leaf]
        f = int(np.prod([idx.shape[a] for a in w_free], dtype=np.int64))
        k = int(np.prod([idx.shape[a] for a in w_contract], dtype=np.int64))
        iv = np.transpose(idx, (*w_free, *w_contract)).reshape(f, k).astype(np.int64)
        # Flat index = sum of per-axis terms; separable views satisfy this identity.
        if not np.array_equal(iv, iv[:, :1] + iv[:1, :] - iv[0, 0]):
            self.skipped.append(f"{self.names[leaf]!r}: a view mixing input and output axes")
            return None
        row = np.unravel_index(iv[0], shape)  # along contracted positions
        col = np.unravel_index(iv[:, 0], shape)  # along output positions
        contract, out, fixed = [], [], []
        for a in range(len(shape)):
            along_k = bool(np.any(row[a] != row[a][0]))
            along_f = bool(np.any(col[a] != col[a][0]))
            if along_k and along_f:
                self.skipped.append(f"{self.names[leaf]!r}: axis {a} mixes inputs and outputs")
                return None
            if along_k or (shape[a] == 1 and not along_f):
                contract.append(a)
            elif along_f:
                out.append(a)
            else:
                fixed.append(a)
        cshape = tuple(shape[a] for a in contract)
        feat = np.ravel_multi_index(tuple(row[a] for a in contract), cshape)
        fixed_shape = tuple(shape[a] for a in fixed)
        sl = int(np.ravel_multi_index(tuple(int(row[a][0]) for a in fixed), fixed_shape))
        use = Use(leaf, kind, tuple(fixed), tuple(contract), tuple(out), sl)
        return use, feat, int(np.prod(cshape, dtype=np.int64))

    def _record(self, use, feat, d_in, xm):
        xm = xm.astype(jnp.float32)
        if feat.shape[0] == d_in and np.array_equal(np.sort(feat), np.arange(d_in)):
            if not np.array_equal(feat, np.arange(d_in)):
                xm = xm[:, np.argsort(feat)]
        else:
            xm = jnp.zeros((xm.shape[0], d_in), jnp.float32).at[:, feat].set(xm)
        h = jnp.einsum("ni,nj->ij", xm, xm, precision=jax.lax.Precision.HIGHEST)
        a = jnp.abs(xm)
        stats = (h, jnp.sum(a, axis=0), jnp.max(a, axis=0, initial=0.0), xm.shape[0])
        self.uses.append((use, stats))

    def dot(self, eqn, invals, inprovs):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        if inprovs[0] is not None and inprovs[1] is not None:
            self.skipped.append(f"{self.names[inprovs[0][0]]!r} multiplied by another weight")
            return
        wpos = 0 if inprovs[0] is not None else 1
        leaf, idx = inprovs[wpos]
        wc, wb = (lc, lb) if wpos == 0 else (rc, rb)
        xc, xb = (rc, rb) if wpos == 0 else (lc, lb)
        x = invals[1 - wpos]
        if wb:
            self.skipped.append(f"{self.names[leaf]!r} has batch dimensions in a dot_general")
            return
        w_free = [a for a in range(idx.ndim) if a not in wc]
        r = self._use(leaf, idx, tuple(wc), w_free, "dense")
        if r is None:
            return
        use, feat, d_in = r
        x_free = [a for a in range(x.ndim) if a not in xc and a not in xb]
        xt = jnp.transpose(x, (*x_free, *xc))
        k = int(np.prod([x.shape[a] for a in xc], dtype=np.int64))
        self._record(use, feat, d_in, xt.reshape(-1, k))

    def conv(self, eqn, invals, inprovs):
        prm = eqn.params
        if inprovs[1] is None or inprovs[0] is not None:
            self.skipped.append("a convolution whose input (not filter) is a weight")
            return
        leaf, idx = inprovs[1]
        if prm["feature_group_count"] != 1 or prm["batch_group_count"] != 1:
            self.skipped.append(f"{self.names[leaf]!r}: grouped convolution")
            return
        dn = prm["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        w_contract = (rhs_spec[1], *rhs_spec[2:])
        r = self._use(leaf, idx, w_contract, [rhs_spec[0]], "conv")
        if r is None:
            return
        use, feat, d_in = r
        x = invals[0]
        filt = tuple(idx.shape[a] for a in rhs_spec[2:])
        patches = jax.lax.conv_general_dilated_patches(
            x.astype(jnp.float32),
            filt,
            prm["window_strides"],
            prm["padding"],
            lhs_dilation=prm["lhs_dilation"],
            rhs_dilation=prm["rhs_dilation"],
            dimension_numbers=dn,
            precision=jax.lax.Precision.HIGHEST,
        )
        # patches are laid out like the output; features are (in_channel, *window).
        feat_axis = out_spec[1]
        pt = jnp.moveaxis(patches, feat_axis, -1)
        del lhs_spec
        self._record(use, feat, d_in, pt.reshape(-1, pt.shape[-1]))


def _bind(eqn, invals):
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _sub_jaxpr(eqn):
    """The inner jaxpr of a call-like equation whose inputs map 1:1 to its own."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if isinstance(j, jcore.ClosedJaxpr) and len(j.jaxpr.invars) == len(eqn.invars):
            return j.jaxpr, j.consts
        if isinstance(j, jcore.Jaxpr) and len(j.invars) == len(eqn.invars):
            return j, ()
    return None


def _concrete_ints(vals):
    try:
        return [int(np.asarray(v)) for v in vals]
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
        return None


def _view(name, prm, idx, invals):
    """The index array of a view op's output, or ``None`` if the op is not a view."""
    if name in _IDENTITY:
        return idx
    if name == "reshape":
        return np.reshape(idx, prm["new_sizes"])
    if name == "transpose":
        return np.transpose(idx, prm["permutation"])
    if name == "squeeze":
        return np.squeeze(idx, tuple(prm["dimensions"]))
    if name == "expand_dims":
        return np.expand_dims(idx, tuple(prm["dimensions"]))
    if name == "rev":
        return np.flip(idx, tuple(prm["dimensions"]))
    if name == "broadcast_in_dim":
        shape, dims = prm["shape"], prm["broadcast_dimensions"]
        full = [1] * len(shape)
        for d, s in zip(dims, idx.shape):
            full[d] = s
        return np.broadcast_to(idx.reshape(full), shape)
    if name == "slice":
        strides = prm["strides"] or (1,) * idx.ndim
        sl = tuple(
            slice(a, b, s) for a, b, s in zip(prm["start_indices"], prm["limit_indices"], strides)
        )
        return idx[sl]
    if name == "dynamic_slice":
        starts = _concrete_ints(invals[1:])
        if starts is None:
            return None
        sizes = prm["slice_sizes"]
        starts = [min(max(s, 0), n - k) for s, n, k in zip(starts, idx.shape, sizes)]
        return idx[tuple(slice(s, s + k) for s, k in zip(starts, sizes))]
    return None
