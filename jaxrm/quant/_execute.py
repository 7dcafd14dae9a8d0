"""Running unmodified JAX/Flax/Equinox functions on quantized parameter trees.

``quantized(fn)`` hands every ``QArray``/``Codebook`` leaf to ``fn`` as a quax
value: ``fn`` sees an array of the leaf's shape and dtype, and quax's jaxpr
interpreter sends each primitive that meets it to the rules below, so each
weight reaches its ``dot_general`` / ``conv_general_dilated`` / gather still
quantized. Layout ops (``transpose``, a float ``convert_element_type``) keep
it quantized; any other op raises naming the leaf path, or with
``unsupported="dequantize"`` dequantizes the leaf at that op.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import quax
from jax import lax

from jaxrm import tree as jtree
from jaxrm.quant import _ops, _tiles
from jaxrm.quant._types import Codebook, QArray, is_quantized

ACTIVATIONS = (None, "int8-dynamic")
UNSUPPORTED = ("error", "dequantize")
# Float bytes of one weight tile dequantized at a time on the weight-only path.
TILE_BYTES = 1 << 18
SUPPORTED_OPS = (
    "dot_general",
    "conv_general_dilated",
    "gather",
    "transpose",
    "convert_element_type",
)


class Weight(quax.ArrayValue):
    """A quantized leaf as ``quantized`` hands it to the wrapped function."""

    leaf: QArray | Codebook
    step: jax.Array | None  # static activation step of this weight's ops (calibrated)
    path: str = eqx.field(static=True)
    mode: str | None = eqx.field(static=True)  # None, "int8-dynamic", "int8-static", "record"
    unsupported: str = eqx.field(static=True)
    recorder: Any = eqx.field(static=True, default=None)
    tile_bytes: int | None = eqx.field(static=True, default=None)

    def aval(self):
        return jax.core.ShapedArray(tuple(self.leaf.shape), jnp.dtype(self.leaf.dtype))

    def materialise(self):
        if self.unsupported == "dequantize":
            return self.leaf.dequantize()
        raise TypeError(
            f"quantized leaf {self.path!r} was used as a plain array; quant.quantized runs "
            f"{', '.join(SUPPORTED_OPS)} on quantized weights (pass unsupported='dequantize' "
            "to dequantize it at other ops)"
        )

    @staticmethod
    def default(primitive, values, params):
        arrays = []
        for v in values:
            if isinstance(v, Weight):
                if v.unsupported != "dequantize":
                    raise TypeError(
                        f"quantized leaf {v.path!r} meets `{primitive.name}`, which "
                        f"quant.quantized does not run on quantized weights (supported: "
                        f"{', '.join(SUPPORTED_OPS)}); pass unsupported='dequantize' to "
                        "dequantize it at that op"
                    )
                arrays.append(v.leaf.dequantize())
            elif isinstance(v, quax.ArrayValue):
                arrays.append(v.materialise())
            else:
                arrays.append(v)
        return primitive.bind(*arrays, **params)

    def with_leaf(self, leaf: Any) -> Weight:
        return Weight(
            leaf, self.step, self.path, self.mode, self.unsupported, self.recorder, self.tile_bytes
        )


def _plain(x: Any) -> Any:
    return x.materialise() if isinstance(x, quax.ArrayValue) else x


def _record(w: Weight, x: jax.Array) -> None:
    if w.mode == "record":
        jax.debug.callback(functools.partial(w.recorder, w.path), jnp.abs(x), ordered=True)


def _step(w: Weight) -> jax.Array | None:
    if w.mode != "int8-static":
        return None
    if w.step is None:
        raise ValueError(
            f"activations has no calibrated range for quantized leaf {w.path!r}; calibrate "
            "with the same function and tree"
        )
    return w.step


def _check_fit(w: Weight, x: Any, w_axes, x_axes, op: str) -> None:
    bad = [(a, b) for a, b in zip(w_axes, x_axes) if w.leaf.shape[a] != x.shape[b]]
    if bad:
        raise ValueError(
            f"quantized leaf {w.path!r} of shape {tuple(w.leaf.shape)} does not fit `{op}` "
            f"with an input of shape {tuple(x.shape)}: its axes {list(w_axes)} meet the "
            f"input's axes {list(x_axes)}"
        )


def _dot(x: Any, w: Weight, side: str, params: dict) -> jax.Array:
    x = _plain(x)
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    if side == "rhs":
        _check_fit(w, x, (*rc, *rb), (*lc, *lb), "dot_general")
    else:
        _check_fit(w, x, (*lc, *lb), (*rc, *rb), "dot_general")
    _record(w, x)
    if w.mode in ("int8-dynamic", "int8-static") and isinstance(w.leaf, QArray):
        w_contract = rc if side == "rhs" else lc
        _ops.check_integer_weight(w.leaf, w.path, tuple(w_contract))
        return _ops.int_dot(x, w.leaf, weight_side=side, step=_step(w), params=params)
    return _tiles.dot(x, w.leaf, side, params, w.tile_bytes)


@quax.register(lax.dot_general_p)
def _dot_rhs(x: jax.Array | quax.ArrayValue, w: Weight, **params):
    return _dot(x, w, "rhs", params)


@quax.register(lax.dot_general_p)
def _dot_lhs(w: Weight, x: jax.Array | quax.ArrayValue, **params):
    return _dot(x, w, "lhs", params)


@quax.register(lax.dot_general_p)
def _dot_both(a: Weight, b: Weight, **params):
    return _dot(b.leaf.dequantize(), a, "lhs", params)


@quax.register(lax.conv_general_dilated_p)
def _conv(x: jax.Array | quax.ArrayValue, w: Weight, **params):
    x = _plain(x)
    dn = params["dimension_numbers"]
    groups = params.get("feature_group_count", 1)
    if w.leaf.shape[dn.rhs_spec[1]] * groups != x.shape[dn.lhs_spec[1]]:
        raise ValueError(
            f"quantized leaf {w.path!r} of shape {tuple(w.leaf.shape)} does not fit "
            f"`conv_general_dilated` with an input of shape {tuple(x.shape)} "
            f"(input features {x.shape[dn.lhs_spec[1]]})"
        )
    _record(w, x)
    if w.mode in ("int8-dynamic", "int8-static") and isinstance(w.leaf, QArray):
        _ops.check_conv_weight(w.leaf, w.path, params["dimension_numbers"].rhs_spec, groups)
        return _ops.int_conv(x, w.leaf, step=_step(w), params=params)
    return _tiles.conv(x, w.leaf, params, w.tile_bytes)


@quax.register(lax.gather_p)
def _gather(w: Weight, indices: jax.Array | quax.ArrayValue, **params):
    try:
        return _ops.gather(w.leaf, _plain(indices), params)
    except ValueError as e:
        raise ValueError(f"quantized leaf {w.path!r}: {e} is not supported") from None


@quax.register(lax.transpose_p)
def _transpose(w: Weight, *, permutation):
    return w.with_leaf(_ops.transpose(w.leaf, permutation))


@quax.register(lax.convert_element_type_p)
def _convert(w: Weight, *, new_dtype, **params):
    if jnp.issubdtype(new_dtype, jnp.floating):
        return w.with_leaf(w.leaf.replace(dtype=str(jnp.dtype(new_dtype))))
    return Weight.default(lax.convert_element_type_p, [w], dict(params, new_dtype=new_dtype))


# ----------------------------------------------------------------------------- public


def _check_activations(activations: Any) -> tuple[str | None, dict[str, Any] | None]:
    if activations is None or activations == "int8-dynamic":
        return activations, None
    if isinstance(activations, dict):
        for k, v in activations.items():
            if not isinstance(k, str) or not jtree.is_array(v):
                raise TypeError(
                    "activations must be None, 'int8-dynamic' or the ranges from "
                    "quant.calibrate_activations (a dict path -> range bound array)"
                )
            if not isinstance(v, jax.core.Tracer) and not np.all(np.asarray(v) >= 0):
                raise ValueError(f"activations range for {k!r} must be >= 0")
        return "int8-static", activations
    raise ValueError(
        "activations must be None (weight-only), 'int8-dynamic' or the ranges from "
        f"quant.calibrate_activations, got {activations!r}"
    )


def check_fields(path: str, leaf: Any) -> None:
    """Raises unless the fields of a quantized leaf fit its shape."""
    shape = tuple(leaf.shape)
    if isinstance(leaf, QArray):
        fields = {"scale": leaf.scale, "zero_point": leaf.zero_point}
        for name, f in fields.items():
            fs = (1,) * (len(shape) - f.ndim) + tuple(f.shape)
            ok = len(fs) == len(shape) and all(
                m in (1, n) or (leaf.group_size and m == -(-n // leaf.group_size))
                for m, n in zip(fs, shape)
            )
            if not ok:
                raise ValueError(
                    f"quantized leaf {path!r}: {name} of shape {tuple(f.shape)} does not fit "
                    f"values of shape {shape} (group_size={leaf.group_size})"
                )
    else:
        c = leaf.centroids
        if c.ndim > 1 and (
            c.ndim != len(shape) + 1
            or any(m not in (1, n) for m, n in zip(c.shape[:-1], shape))
        ):
            raise ValueError(
                f"quantized leaf {path!r}: centroids of shape {tuple(c.shape)} do not fit "
                f"indices of shape {shape}"
            )
    if leaf.mask is not None and tuple(leaf.mask.shape) != shape:
        raise ValueError(
            f"quantized leaf {path!r}: mask of shape {tuple(leaf.mask.shape)} is not {shape}"
        )


def wrap_leaves(
    tree: Any, mode, steps, unsupported: str, recorder=None, tile_bytes: int | None = None
) -> Any:
    """Replaces each quantized leaf of ``(args, kwargs)`` by a ``Weight``.

    Paths name a leaf inside its argument (``"params/Dense_0/kernel"`` for
    ``apply({"params": p}, x)``), the argument's position or keyword dropped.
    """

    def visit(kp, leaf):
        if not is_quantized(leaf):
            return leaf
        path = jtree.path_str(kp[2:])
        check_fields(path, leaf)
        step = None
        if mode == "int8-static":
            if path not in steps:
                return Weight(leaf, None, path, mode, unsupported, recorder, tile_bytes)
            bound = jnp.asarray(steps[path], jnp.float32)
            step = jnp.where(bound > 0, bound / _ops.INT8_MAX, jnp.ones_like(bound))
        return Weight(leaf, step, path, mode, unsupported, recorder, tile_bytes)

    return jax.tree_util.tree_map_with_path(visit, tree, is_leaf=is_quantized)


def quantized(
    fn: Callable[..., Any],
    *,
    activations: Any = None,
    unsupported: str = "error",
    tile_bytes: int | None = TILE_BYTES,
) -> Callable[..., Any]:
    """Returns ``fn`` running on trees that hold ``QArray``/``Codebook`` leaves.

    No float copy of the tree is made: each quantized weight meets its
    ``lax.dot_general`` (``jnp.dot``, ``einsum``, ``@``), ``conv_general_dilated``
    or gather (embedding lookup) still quantized, through quax's jaxpr
    interpreter, so unmodified Flax Linen ``apply``, NNX modules (through
    ``nnx.merge`` inside ``fn``) and Equinox models run as they are. With
    ``jax.jit``, the compiled function takes the integer values and scales as
    its arguments (int8: a quarter of float32's bytes; packed int4: an eighth).

    * ``activations=None`` (weight-only): the weight is dequantized at the op;
      each output entry is the same contraction as in ``fn(dequantize(tree))``.
      A weight whose float copy exceeds ``tile_bytes`` is dequantized tile by
      tile along its largest output axis inside a loop that writes each
      tile's slice of the output, so one tile is in float at a time and the
      compiled temporary bytes stay near the float model's. ``Codebook``
      leaves are a gather into their centroids at the op.
    * ``activations="int8-dynamic"``: the op's float input is quantized to
      int8 symmetric with a range per row (per token: the max over the
      contracted axes; per example for convolutions), multiplied with the int8
      weights in ``int32`` (``preferred_element_type``) and rescaled by both
      scales. Takes ``QArray`` weights of at most 8 bits, symmetric or
      asymmetric (the zero-point term ``z * sum(x_q)`` is subtracted in
      int32), per tensor, per channel or group-wise along one contracted axis
      (one int32 partial product per group, rescaled and summed);
      ``Codebook`` leaves stay weight-only.
    * ``activations=ranges`` from
      [`calibrate_activations`][jaxrm.quant.calibrate_activations]: as above
      with fixed (static) per-op steps.

    Masked entries decode to exactly 0 on every path. Works under ``jit``,
    ``grad`` (with respect to float leaves and scales, e.g. after
    [`partition`][jaxrm.quant.partition]) and ``vmap``, and through ``lax.scan`` (``nn.scan``,
    ``nnx.scan``: stacked leaves are sliced with their scales).

    Args:
      fn: any function; quantized leaves may appear anywhere in its arguments.
      activations: ``None``, ``"int8-dynamic"`` or calibrated ranges.
      unsupported: what an op other than the supported ones does when it meets
        a quantized leaf: ``"error"`` (a ``TypeError`` naming the leaf path and
        the op) or ``"dequantize"`` (the leaf is dequantized for that op).
      tile_bytes: float bytes of the largest weight tile the weight-only path
        dequantizes at once (``None``: whole weights; default 256 KiB).

    Returns:
      A function with ``fn``'s signature.

    Raises:
      ValueError: bad ``activations``/``unsupported``/``tile_bytes``; at call
        time, a leaf the integer path cannot take (over 8 bits, scales varying
        along several contracted axes, groups in a grouped convolution),
        a missing calibrated range, or a gather the leaf's layout cannot serve.
      TypeError: at call time, an unsupported op meeting a quantized leaf.
    """
    mode, steps = _check_activations(activations)
    if tile_bytes is not None and (
        isinstance(tile_bytes, bool) or not isinstance(tile_bytes, int) or tile_bytes < 1
    ):
        raise ValueError(f"tile_bytes must be None or an int >= 1, got {tile_bytes!r}")
    if unsupported not in UNSUPPORTED:
        raise ValueError(f"unsupported must be one of {list(UNSUPPORTED)}, got {unsupported!r}")
    inner = quax.quaxify(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = wrap_leaves((args, kwargs), mode, steps, unsupported, None, tile_bytes)
        return inner(*args, **kwargs)

    return run
