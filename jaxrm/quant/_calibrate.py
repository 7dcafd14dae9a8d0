"""Static activation ranges for int8 execution, recorded at each quantized op."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
import quax

from jaxrm import tree as jtree
from jaxrm.quant import _common
from jaxrm.quant._execute import wrap_leaves
from jaxrm.quant._ops import INT8_MAX
from jaxrm.quant._types import QArray, is_quantized
from jaxrm.quant._uniform import MSE_RATIOS

METHODS = ("minmax", "percentile", "mse")


def _slices(leaf: Any) -> int | None:
    """The number of per-slice ranges a leaf stacked on axis 0 takes (else ``None``)."""
    if isinstance(leaf, QArray):
        s = leaf.scale
        if s.ndim == len(leaf.shape) and leaf.shape[0] > 1 and s.shape[0] == leaf.shape[0]:
            return int(leaf.shape[0])
    elif len(leaf.centroids.shape) > 1 and leaf.centroids.shape[0] > 1:
        return int(leaf.centroids.shape[0])
    return None


def _int8_error(a: np.ndarray, bound: float) -> float:
    """Squared error of symmetric int8 fake quantization of ``|x|`` values ``a``."""
    step = bound / INT8_MAX if bound > 0 else 1.0
    q = np.minimum(np.round(a / step), INT8_MAX) * step
    return float(np.sum(np.square(a - q)))


class _Recorder:
    """Collects ``|x|`` at each quantized op (host callbacks, in call order)."""

    def __init__(self, slices: dict[str, int | None]):
        self.slices = slices
        self.batch: dict[str, list[np.ndarray]] = {}

    def __call__(self, path: str, x: Any) -> None:
        self.batch.setdefault(path, []).append(np.asarray(x, np.float64).ravel())

    def groups(self) -> dict[str, list[np.ndarray]]:
        """This batch's activations per range: one per slice when a stacked leaf
        was met once per slice (a scanned layer), else all calls together."""
        out = {}
        for path, calls in self.batch.items():
            if self.slices.get(path) == len(calls):
                out[path] = calls
            else:
                out[path] = [np.concatenate(calls)]
        self.batch = {}
        return out


def _run(fn, params, batches, recorder) -> Iterable[dict[str, list[np.ndarray]]]:
    def call(p, batch):
        (p, batch), _ = wrap_leaves(((p, batch), {}), "record", None, "error", recorder)
        return quax.quaxify(fn)(p, batch)

    jitted = jax.jit(call)
    for batch in batches:
        jax.block_until_ready(jitted(params, batch))
        jax.effects_barrier()
        yield recorder.groups()


def calibrate_activations(
    fn: Callable[[Any, Any], Any],
    params: Any,
    batches: Iterable[Any],
    *,
    method: str = "minmax",
    percentile: float = 99.99,
) -> dict[str, jax.Array]:
    """Records the input range of every quantized op of ``fn(params, batch)``.

    Runs ``fn`` as [`quantized`][jaxrm.quant.quantized] does (weight-only) on each batch and
    records ``|x|`` of the float input of each ``dot_general`` /
    ``conv_general_dilated`` that meets a quantized leaf. The result maps the
    leaf's path (as [`quantized`][jaxrm.quant.quantized] names it) to the clipping bound ``a`` of
    a symmetric int8 grid (step ``a / 127``); pass it as
    ``quantized(fn, activations=ranges)``. A leaf stacked on axis 0 whose op
    runs once per slice (a scanned layer) gets one bound per slice (shape
    ``(L,)``); otherwise all uses of a leaf share one bound (shape ``()``).

    * ``"minmax"``: the largest ``|x|`` over all batches;
    * ``"percentile"``: the mean over batches of each batch's ``percentile``
      of ``|x|``;
    * ``"mse"``: the bound ``r * max|x|`` with ``r`` in ``{1.0, 0.99, ..., 0.2}``
      that minimizes the squared int8 error summed over all batches (largest
      ``r`` on ties); this takes a second pass over ``batches``.

    The recorded activations of one batch are held on the host until the batch
    is reduced, so calibration batches should be of inference size.

    Args:
      fn: ``fn(params, batch)``, e.g. ``lambda p, x: model.apply({"params": p}, x)``.
      params: the quantized tree (``QArray``/``Codebook`` leaves).
      batches: an iterable of batches (a list for ``"mse"``, read twice).
      method: ``"minmax"``, ``"percentile"`` or ``"mse"``.
      percentile: the percentile in ``(50, 100]`` for ``"percentile"``.

    Returns:
      ``{path: bound}`` with float32 arrays.

    Raises:
      ValueError: unknown ``method``, bad ``percentile``, no batches, no
        quantized op met, or ``params`` without quantized leaves.
    """
    _common.check_choice(method, METHODS, "method")
    if isinstance(percentile, bool) or not isinstance(percentile, int | float):
        raise TypeError(f"percentile must be a number in (50, 100], got {percentile!r}")
    if not 50.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
    leaves = [x for x in jax.tree.leaves(params, is_leaf=is_quantized) if is_quantized(x)]
    if not leaves:
        raise ValueError("params holds no QArray/Codebook leaf to calibrate")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty")
    slices = {}
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_quantized)
    for kp, leaf in flat:
        if is_quantized(leaf):
            slices[jtree.path_str(kp)] = _slices(leaf)
    recorder = _Recorder(slices)
    stats: dict[str, list[list[float]]] = {}
    for groups in _run(fn, params, batches, recorder):
        for path, arrays in groups.items():
            if method == "minmax":
                value = [float(np.max(a, initial=0.0)) for a in arrays]
            elif method == "percentile":
                value = [float(np.percentile(a, percentile)) if a.size else 0.0 for a in arrays]
            else:
                value = [float(np.max(a, initial=0.0)) for a in arrays]
            stats.setdefault(path, []).append(value)
    if not stats:
        raise ValueError("fn met no quantized leaf in a dot_general or convolution")
    if method == "minmax":
        bounds = {p: np.max(np.asarray(v), axis=0) for p, v in stats.items()}
    elif method == "percentile":
        bounds = {p: np.mean(np.asarray(v), axis=0) for p, v in stats.items()}
    else:
        amax = {p: np.max(np.asarray(v), axis=0) for p, v in stats.items()}
        bounds = _mse_bounds(fn, params, batches, recorder, amax)
    return {
        p: jax.numpy.asarray(_squeeze(b, slices.get(p)), jax.numpy.float32)
        for p, b in bounds.items()
    }


def _squeeze(b: np.ndarray, n: int | None) -> np.ndarray:
    b = np.asarray(b, np.float64)
    return b if (n is not None and b.size == n and n > 1) else b.reshape(())


def _mse_bounds(fn, params, batches, recorder, amax: dict[str, np.ndarray]):
    errors: dict[str, np.ndarray] = {}
    for groups in _run(fn, params, batches, recorder):
        for path, arrays in groups.items():
            top = np.broadcast_to(amax[path], (len(arrays),))
            e = np.asarray(
                [[_int8_error(a, r * m) for r in MSE_RATIOS] for a, m in zip(arrays, top)]
            )
            errors[path] = errors.get(path, 0) + e
    ratios = np.asarray(MSE_RATIOS)
    out = {}
    for path, e in errors.items():
        best = ratios[np.argmin(e, axis=1)]
        out[path] = best * np.broadcast_to(amax[path], best.shape)
    return out
