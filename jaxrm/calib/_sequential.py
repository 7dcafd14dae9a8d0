"""Sequential one-shot compression: each layer calibrated on the already compressed ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrm import tree as jtree
from jaxrm.calib._collect import collect
from jaxrm.calib._stats import Stats

__all__ = ["sequential"]


def _node(tree: Any, path: str) -> Any:
    """The entry at ``path``, treating objects with ``dequantize`` as whole leaves."""
    nodes, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: x is None or hasattr(x, "dequantize")
    )
    for kp, x in nodes:
        if jtree.path_str(kp) == path:
            return x
    raise KeyError(path)


def _floats(leaf: Any, mask: Any) -> jax.Array:
    x = leaf.dequantize() if hasattr(leaf, "dequantize") else jnp.asarray(leaf)
    return x if mask is None else jnp.where(mask, x, jnp.zeros((), x.dtype))


def _merge_slice(acc: Any, new: Any, index: tuple, shape: tuple[int, ...]) -> Any:
    """``acc`` with the slice ``index`` of every leaf-shaped array taken from ``new``."""

    def one(a, b):
        if a is None or b is None:
            return b
        if np.ndim(a) == len(shape) and all(
            np.shape(a)[ax] == shape[ax] for ax, i in enumerate(index) if i != slice(None)
        ):
            return jnp.asarray(a).at[index].set(jnp.asarray(b)[index])
        return b

    return jax.tree.map(one, acc, new, is_leaf=lambda x: x is None)


def sequential(
    fn: Callable[[Any, Any], Any],
    params: Any,
    batches: Sequence[Any],
    step: Callable[[Any, Stats], tuple[Any, Any]],
    *,
    where: jtree.Where = None,
) -> tuple[Any, Any]:
    """Compresses layer by layer, each calibrated on the outputs of those before it.

    The papers (GPTQ, SparseGPT, Wanda) run one-shot methods sequentially: the
    inputs of layer ``l`` come from layers ``< l`` already compressed. Here
    the unit is a (leaf, stacked slice) pair, in the order the forward pass
    first uses them; for each, statistics are collected on the current
    parameters (earlier units replaced by their compressed floats), ``step``
    compresses the leaf, and the unit's slice of its result is kept.

    Args:
      fn: ``fn(params, batch)``, as for [jaxrm.calib.collect][].
      params: the float parameters.
      batches: a sequence of batches (read once per unit, so not an iterator).
      step: ``step(params, stats) -> (tree, masks)`` compressing the leaves in
        ``stats`` (one leaf each call), e.g.
        ``lambda p, s: (quant.gptq(p, s, 4), None)`` or
        ``lambda p, s: prune.sparsegpt(p, s, 0.5)``; ``masks`` may be ``None``.
      where: leaves to compress (default: every weight feeding a matmul/conv).

    Returns:
      ``(tree, masks)``: ``params`` with each compressed leaf assembled slice by
      slice from its steps (``QArray`` leaves stay quantized), and the masks
      (``None`` where ``step`` gave none).

    Raises:
      TypeError: ``batches`` is not a sequence (it is read many times).
      ValueError: as [jaxrm.calib.collect][].
    """
    if not isinstance(batches, Sequence) or isinstance(batches, str | bytes):
        raise TypeError(
            f"batches must be a sequence (it is read once per layer), got {type(batches).__name__}"
        )
    first = collect(fn, params, batches, where=where)
    current = params
    results: dict[str, list] = {}
    for path, sl in first.order:
        stats = collect(fn, current, batches, where=lambda p, x, path=path: p == path)
        tree, masks = step(current, stats)
        leaf = _node(tree, path)
        mask = None if masks is None else _node(masks, path)
        ls = stats[path]
        index = [slice(None)] * len(ls.shape)
        coords = np.unravel_index(sl, tuple(ls.shape[a] for a in ls.stacked)) if ls.stacked else ()
        for a, c in zip(ls.stacked, coords):
            index[a] = int(c)
        index = tuple(index)
        fl = _floats(leaf, mask)
        current = jtree.map_selected(
            lambda p, x, fl=fl, index=index: (
                jnp.asarray(x).at[index].set(fl[index].astype(x.dtype))
            ),
            current,
            lambda p, x, path=path: p == path,
        )
        if path in results:
            old_leaf, old_mask = results[path]
            leaf = _merge_slice(old_leaf, leaf, index, ls.shape)
            mask = _merge_slice(old_mask, mask, index, ls.shape)
        results[path] = [leaf, mask]
    out = jtree.map_selected(lambda p, x: results[p][0], params, lambda p, x: p in results)
    masks = jtree.map_selected(
        lambda p, x: results[p][1], params, lambda p, x: p in results, otherwise=lambda p, x: None
    )
    return out, masks
