"""The compression methods of the LLM experiment, each ``(params, stats) -> (tree, masks)``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

import jaxrm
from jaxrm import budget, calib, prune, quant
from jaxrm import tree as jtree

WHERE = (
    r"^blocks/(q|k|v|o|up|down)/kernel$"  # the blocks' matmuls; embeddings, head, norms stay float
)


def _masked(params, keep):
    return prune.apply(params, keep), keep


def _magnitude(target):
    """|W| per output channel of each slice: Wanda's comparison, with unit activation norms."""

    def run(params, stats):
        by_path = dict(jtree.leaves_with_paths(params))
        keeps = {}
        for path, _, ls in stats.pick(params, WHERE):
            s = np.swapaxes(ls.matrix(np.abs(np.asarray(by_path[path]))), 1, 2)  # (S, out, in)
            if isinstance(target, prune.NM):
                g = s.reshape(*s.shape[:2], -1, target.m)
                rank = np.argsort(np.argsort(-g, axis=-1, kind="stable"), axis=-1, kind="stable")
                keep = (rank < target.n).reshape(s.shape)
            else:
                rank = np.argsort(np.argsort(-s, axis=-1, kind="stable"), axis=-1, kind="stable")
                keep = rank < round((1 - target) * ls.d_in)
            keeps[path] = jnp.asarray(ls.unmatrix(np.swapaxes(keep, 1, 2)))
        keep = jtree.map_selected(
            lambda p, x: keeps[p], params, lambda p, x: p in keeps, otherwise=lambda p, x: None
        )
        return _masked(params, keep)

    return run


def qwix_gptq(params, stats: calib.Stats, bits: int = 4):
    """Qwix's GPTQ core on each slice, with the Hessians jaxrm collected (same data)."""
    from qwix._src.core import qarray
    from qwix.contrib import gptq_core

    qtype = {4: jnp.int4, 8: jnp.int8}[bits]
    how = qarray.HowToQuantize(qtype=qtype, channelwise_axes=[0])
    new = {}
    for path, leaf, ls in stats.pick(params, WHERE):
        w3 = ls.matrix(np.asarray(leaf, np.float32))
        out = []
        for i in range(ls.n_slices):
            qa, _ = gptq_core.quantize_weight(
                jnp.asarray(w3[i].T), jnp.asarray(ls.hessian[i], jnp.float32), how
            )
            out.append(np.asarray(qarray.dequantize(qa)).T)
        new[path] = jnp.asarray(ls.unmatrix(np.stack(out)), leaf.dtype)
    return jtree.map_selected(lambda p, x: new[p], params, lambda p, x: p in new), None


def _awq(bits: int, group: int | None):
    """AWQ's scaled weights, quantized, with the input scales stored beside them in the file."""

    def run(params, stats):
        tree, scales = quant.awq(params, stats, bits, group_size=group, where=WHERE)
        kept = {
            p.replace("/", "."): s for p, s in jtree.leaves_with_paths(scales) if s is not None
        }
        return {"params": tree, AWQ_SCALES: kept}, None

    return run


AWQ_SCALES = "awq_input_scales"


def effective(decoded):
    """The parameters the model runs, from a decoded file (AWQ: ``W = dequantize(sW) / s``)."""
    if not (isinstance(decoded, dict) and AWQ_SCALES in decoded):
        return decoded
    scales = {k.replace(".", "/"): v for k, v in decoded[AWQ_SCALES].items()}
    return jtree.map_selected(
        lambda p, x: (x / scales[p]).astype(x.dtype),
        decoded["params"],
        lambda p, x: p in scales,
    )


def methods(group: int) -> dict[str, Callable[[Any, calib.Stats], tuple[Any, Any]]]:
    """Name -> method; ``group`` is the group size of the group-wise rows."""
    nm = prune.nm(2, 4)
    m: dict[str, Callable] = {"float": lambda p, s: (p, None)}
    for bits in (4, 3):
        m[f"RTN {bits}-bit"] = lambda p, s, b=bits: (quant.rtn(p, s, b, where=WHERE), None)
        m[f"GPTQ {bits}-bit"] = lambda p, s, b=bits: (quant.gptq(p, s, b, where=WHERE), None)
        m[f"RTN {bits}-bit g{group}"] = lambda p, s, b=bits: (
            quant.rtn(p, s, b, group_size=group, where=WHERE),
            None,
        )
        m[f"GPTQ {bits}-bit g{group}"] = lambda p, s, b=bits: (
            quant.gptq(p, s, b, group_size=group, where=WHERE),
            None,
        )
        m[f"AWQ {bits}-bit g{group}"] = _awq(bits, group)
    for name, target in (("50%", 0.5), ("2:4", nm)):
        m[f"magnitude {name}"] = _magnitude(target)
        m[f"Wanda {name}"] = lambda p, s, t=target: _masked(p, prune.wanda(p, s, t, where=WHERE))
        m[f"SparseGPT {name}"] = lambda p, s, t=target: prune.sparsegpt(p, s, t, where=WHERE)
    m["SparseGPT 2:4 + 4-bit"] = lambda p, s: budget.sparsegpt_quant(p, s, nm, 4, where=WHERE)
    m["Qwix GPTQ 4-bit (sym.)"] = qwix_gptq
    return m


def run(method, params, stats) -> tuple[Any, Any, float]:
    t = time.perf_counter()
    tree, masks = method(params, stats)
    jaxrm.tree.nbytes(tree)  # forces the results
    return tree, masks, time.perf_counter() - t
