"""Rematerialization policies and the residuals a backward pass keeps."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend
import numpy as np

from jaxrm.tree import path_str

__all__ = ["POLICIES", "Residual", "policy", "remat", "residual_bytes", "residuals"]

_cp = jax.checkpoint_policies

POLICIES: types.MappingProxyType[str, Callable[..., Any]] = types.MappingProxyType(
    {
        # Save every intermediate: the same residuals as no checkpoint at all.
        "none": _cp.everything_saveable,
        # Save nothing: recompute the whole forward pass inside the backward pass.
        "full": _cp.nothing_saveable,
        # Save the outputs of matrix multiplies (dot_general), recompute the rest.
        "dots": _cp.dots_saveable,
        # As "dots", but only matmuls without batch dimensions (the weight matmuls,
        # not attention's batched score/value products).
        "dots_no_batch": _cp.dots_with_no_batch_dims_saveable,
        # As "dots_no_batch", but the saved values go to pinned host memory.
        "offload_dots": _cp.offload_dot_with_no_batch_dims("device", "pinned_host"),
    }
)
"""Named ``jax.checkpoint`` policies.

``"none"`` saves everything (no recomputation), ``"full"`` saves nothing,
``"dots"`` saves matmul outputs, ``"dots_no_batch"`` saves matmul outputs
without batch dimensions, ``"offload_dots"`` offloads those to host memory
(GPU/TPU only). ``"names:a,b"`` (not a key here, see [`policy`][jaxrm.memory.policy]) saves only
the values tagged ``jax.ad_checkpoint.checkpoint_name(x, "a")`` or ``"b"``.
"""

_NAMES_PREFIX = "names:"


def _on_cpu_only() -> bool:
    return all(d.platform == "cpu" for d in jax.devices())


def policy(name: str | Callable[..., Any]) -> Callable[..., Any]:
    """Returns the ``jax.checkpoint`` policy for a name.

    Args:
      name: a key of [`POLICIES`][jaxrm.memory.POLICIES], ``"names:a,b,..."`` (save only the
        values tagged with these ``checkpoint_name``\\ s), or a policy callable,
        which is returned as is.

    Returns:
      A policy for ``jax.checkpoint(..., policy=...)``.

    Raises:
      ValueError: an unknown name, an empty ``"names:"`` list, or
        ``"offload_dots"`` when only CPU devices are present.
      TypeError: ``name`` is neither a string nor callable.
    """
    if callable(name):
        return name
    if not isinstance(name, str):
        raise TypeError(f"policy must be a string or a callable, got {type(name).__name__}")
    if name.startswith(_NAMES_PREFIX):
        names = [n.strip() for n in name[len(_NAMES_PREFIX) :].split(",") if n.strip()]
        if not names:
            raise ValueError(f"policy={name!r} names no checkpoint_name tag (use 'names:a,b')")
        return _cp.save_only_these_names(*names)
    if name not in POLICIES:
        known = ", ".join([*POLICIES, "names:a,b"])
        raise ValueError(f"policy={name!r} is not a known policy; choose one of: {known}")
    if name == "offload_dots" and _on_cpu_only():
        raise ValueError(
            "policy='offload_dots' offloads residuals to pinned host memory, which needs a "
            "GPU or TPU backend; on CPU use 'dots_no_batch' (same residuals, kept on device)"
        )
    return POLICIES[name]


_policy_of = policy  # remat's ``policy`` argument shadows the function


def remat(
    fn: Callable[..., Any],
    policy: str | Callable[..., Any] = "full",
    *,
    prevent_cse: bool = True,
    static_argnums: int | Sequence[int] = (),
) -> Callable[..., Any]:
    """Wraps ``fn`` in ``jax.checkpoint`` with a named policy.

    ``remat(fn, "none")`` returns ``fn`` itself (nothing is recomputed).

    Inside ``lax.scan`` (or ``fori_loop``) pass ``prevent_cse=False``: the loop
    already stops XLA from merging the recomputation into the forward pass, and
    the extra barriers only cost speed. Outside loops keep the default ``True``.

    Args:
      fn: the function whose backward pass recomputes instead of storing.
      policy: a name of [`POLICIES`][jaxrm.memory.POLICIES], ``"names:a,b"``, or a policy callable.
      prevent_cse: passed to ``jax.checkpoint``.
      static_argnums: positions of arguments that are static (Python values).

    Returns:
      The checkpointed function, with ``fn``'s signature.

    Raises:
      ValueError: an unknown policy, or ``"offload_dots"`` on CPU.
      TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if isinstance(policy, str) and policy == "none":
        return fn
    chosen = _policy_of(policy)
    if isinstance(static_argnums, int):
        static_argnums = (static_argnums,)
    return jax.checkpoint(
        fn, policy=chosen, prevent_cse=prevent_cse, static_argnums=tuple(static_argnums)
    )


@dataclasses.dataclass(frozen=True)
class Residual:
    """One value the backward pass keeps from the forward pass.

    Attributes:
      shape: the value's shape.
      dtype: the value's dtype.
      nbytes: bytes it occupies.
      kind: ``"argument"`` (an input of the function, held by the caller
        anyway), ``"intermediate"`` (computed in the forward pass),
        ``"constant"`` or ``"literal"``.
      source: where it comes from: the argument's position and path
        (``"argument 0/Dense_0/kernel"``)
        or the primitive and source line that produced it
        (``"output of dot_general at model.py:12 (layer)"``).
      name: the ``checkpoint_name`` tag of the value, if any.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int
    kind: str
    source: str
    name: str | None = None

    def __str__(self) -> str:
        short = np.dtype(self.dtype).name
        return f"{short}{list(self.shape)} {self.nbytes:,} B  {self.source}"


def _summarize(source_info: Any) -> str:
    # source_info_util is not public; fall back to nothing if it moves.
    try:
        from jax._src import source_info_util

        return source_info_util.summarize(source_info)
    except Exception:  # pragma: no cover - depends on JAX internals
        return "unknown location"


def _nbytes(aval: Any) -> int:
    return int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize


def residuals(fn: Callable[..., Any], *args: Any) -> list[Residual]:
    """Lists the values saved for the backward pass of ``fn(*args)``.

    The residuals are the leaves of the ``jax.vjp`` closure, found by tracing
    (nothing runs, so this works on any backend and with
    ``jax.ShapeDtypeStruct`` arguments). The list has one entry per residual in
    the order of ``jax.ad_checkpoint.print_saved_residuals``.

    Args:
      fn: a function of array pytrees (differentiated with respect to all of them).
      *args: its arguments: arrays or ``jax.ShapeDtypeStruct`` pytrees.

    Returns:
      A list of [`Residual`][jaxrm.memory.Residual].

    Raises:
      TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(args)
    arg_paths = [path_str(kp) for kp, _ in flat]
    leaves = [leaf for _, leaf in flat]

    def vjp_of_flat(*xs):
        return jax.vjp(fn, *jax.tree_util.tree_unflatten(treedef, xs))

    closed, (_, vjp_shape) = jax.make_jaxpr(vjp_of_flat, return_shape=True)(*leaves)
    jaxpr = closed.jaxpr
    num_res = len(jax.tree_util.tree_leaves(vjp_shape))
    outvars = jaxpr.outvars[len(jaxpr.outvars) - num_res :] if num_res else []

    # Look through reduce_precision, as print_saved_residuals does.
    through = {
        e.outvars[0]: e.invars[0] for e in jaxpr.eqns if e.primitive.name == "reduce_precision"
    }
    producers = {}
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            producers[v] = eqn
    invars = {v: i for i, v in enumerate(jaxpr.invars)}
    constvars = set(jaxpr.constvars)

    out = []
    for v in outvars:
        aval = v.aval
        shape, dtype, size = tuple(aval.shape), np.dtype(aval.dtype), _nbytes(aval)
        if isinstance(v, jax.extend.core.Literal):
            out.append(Residual(shape, dtype, size, "literal", "a literal"))
            continue
        v = through.get(v, v)
        if v in invars:
            out.append(Residual(shape, dtype, size, "argument", f"argument {arg_paths[invars[v]]}"))
        elif v in constvars:
            out.append(Residual(shape, dtype, size, "constant", "a closed-over constant"))
        else:
            eqn = producers[v]
            name = eqn.params.get("name") if eqn.primitive.name == "name" else None
            where = _summarize(eqn.source_info)
            prim = eqn.primitive.name
            if prim in ("jit", "pjit"):
                prim = f"jitted function {eqn.params.get('name')!r}"
            source = f"named {name!r} at {where}" if name else f"output of {prim} at {where}"
            out.append(Residual(shape, dtype, size, "intermediate", source, name))
    return out


def residual_bytes(
    fn: Callable[..., Any], *args: Any, include_arguments: bool = False
) -> int:
    """Returns the bytes ``fn(*args)`` saves for its backward pass.

    By default the function's own arguments are not counted: the caller holds
    them anyway, so saving a reference costs no memory. This is the number a
    remat policy changes.

    Args:
      fn: a function of array pytrees.
      *args: its arguments: arrays or ``jax.ShapeDtypeStruct`` pytrees.
      include_arguments: also count residuals that are arguments (then the
        total equals the bytes of the leaves of ``jax.vjp(fn, *args)[1]``).

    Returns:
      The number of bytes.

    Raises:
      TypeError: ``fn`` is not callable.
    """
    return sum(
        r.nbytes for r in residuals(fn, *args) if include_arguments or r.kind != "argument"
    )
