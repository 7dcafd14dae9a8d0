"""Rematerialization policies and the residuals a backward pass keeps."""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend
import numpy as np

from jaxrm.memory._tags import NamedPolicy, check_tags
from jaxrm.tree import path_str

__all__ = [
    "POLICIES",
    "Residual",
    "named_policy",
    "policy",
    "remat",
    "required_tags",
    "residual_bytes",
    "residuals",
]

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
without batch dimensions, ``"offload_dots"`` offloads those to pinned host
memory. Two families take tag names and are not keys here (see
[jaxrm.memory.policy][]): ``"names:a,b"`` saves only the values tagged
``jax.ad_checkpoint.checkpoint_name(x, "a")`` or ``"b"``, and
``"offload_names:a,b"`` moves those values to pinned host memory instead of
keeping them on the device.
"""

_NAMES_PREFIX = "names:"
_OFFLOAD_PREFIX = "offload_names:"
_HOST_KIND = "pinned_host"


def _memory_kinds() -> set[str]:
    """The memory kinds of the default device (``{"device", "pinned_host", ...}``)."""
    try:
        return {m.kind for m in jax.devices()[0].addressable_memories()}
    except Exception:  # a backend without memory spaces
        return set()


def _check_host_memory(name: str) -> None:
    kinds = _memory_kinds()
    if _HOST_KIND not in kinds:
        platform = jax.devices()[0].platform
        raise ValueError(
            f"policy={name!r} offloads residuals to {_HOST_KIND!r} memory, which the "
            f"{platform} backend does not have (its memory kinds: {sorted(kinds) or 'none'}); "
            "use 'dots_no_batch' or 'names:...' (the same residuals, kept on the device)"
        )


def _tag_names(name: str, prefix: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in name[len(prefix) :].split(",") if n.strip())
    if not names:
        raise ValueError(
            f"policy={name!r} names no checkpoint_name tag (use '{prefix}a,b')"
        )
    return names


def required_tags(name: Any) -> tuple[str, ...]:
    """The ``checkpoint_name`` tags a policy name needs (``()`` for the others)."""
    if isinstance(name, str):
        for prefix in (_NAMES_PREFIX, _OFFLOAD_PREFIX):
            if name.startswith(prefix):
                return _tag_names(name, prefix)
    return ()


def policy(name: str | Callable[..., Any]) -> Callable[..., Any]:
    """Returns the ``jax.checkpoint`` policy for a name.

    Args:
      name: a key of [jaxrm.memory.POLICIES][], ``"names:a,b,..."`` (save only
        the values tagged with these ``checkpoint_name``\\ s),
        ``"offload_names:a,b,..."`` (move those values to pinned host memory),
        or a policy callable, which is returned as is.

    Returns:
      A policy for ``jax.checkpoint(..., policy=...)``.

    Raises:
      ValueError: an unknown name, an empty tag list, or an offloading policy
        on a backend whose devices have no ``pinned_host`` memory kind.
      TypeError: ``name`` is neither a string nor callable.
    """
    if callable(name):
        return name
    if not isinstance(name, str):
        raise TypeError(f"policy must be a string or a callable, got {type(name).__name__}")
    if name.startswith(_NAMES_PREFIX):
        return _cp.save_only_these_names(*_tag_names(name, _NAMES_PREFIX))
    if name.startswith(_OFFLOAD_PREFIX):
        names = _tag_names(name, _OFFLOAD_PREFIX)
        _check_host_memory(name)
        return _cp.save_and_offload_only_these_names(
            names_which_can_be_saved=[],
            names_which_can_be_offloaded=list(names),
            offload_src="device",
            offload_dst=_HOST_KIND,
        )
    if name not in POLICIES:
        known = ", ".join([*POLICIES, "names:a,b", "offload_names:a,b"])
        raise ValueError(f"policy={name!r} is not a known policy; choose one of: {known}")
    if name == "offload_dots":
        _check_host_memory(name)
    return POLICIES[name]


def named_policy(name: str | Callable[..., Any], where: str) -> Callable[..., Any]:
    """As [jaxrm.memory.policy][], wrapped so a jaxpr walk can check its tags."""
    chosen = policy(name)
    label = name if isinstance(name, str) else getattr(name, "__name__", repr(name))
    return NamedPolicy(chosen, label, required_tags(name), where)


_policy_of = policy  # remat's ``policy`` argument shadows the function


def _abstract(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype) if hasattr(x, "dtype") else x, tree
    )


def _signature(args: Any, kwargs: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    key = tuple(
        (tuple(np.shape(x)), str(x.dtype)) if hasattr(x, "dtype") else x for x in leaves
    )
    try:
        hash(key)
    except TypeError:
        return None
    return treedef, key


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

    A ``"names:..."`` or ``"offload_names:..."`` policy is checked against the
    function: the first call with new argument shapes traces ``fn`` once more
    and raises if a named tag is never produced by a ``checkpoint_name`` in it
    (such a policy would silently save nothing, like ``"full"``).

    Args:
      fn: the function whose backward pass recomputes instead of storing.
      policy: a name of [jaxrm.memory.POLICIES][], ``"names:a,b"``,
        ``"offload_names:a,b"``, or a policy callable.
      prevent_cse: passed to ``jax.checkpoint``.
      static_argnums: positions of arguments that are static (Python values).

    Returns:
      The checkpointed function, with ``fn``'s signature.

    Raises:
      ValueError: an unknown policy, an offloading policy on a backend without
        host memory, or (when called) a tag the policy names that ``fn``
        never tags.
      TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if isinstance(policy, str) and policy == "none":
        return fn
    chosen = named_policy(policy, f"function {getattr(fn, '__name__', repr(fn))!r}")
    if isinstance(static_argnums, int):
        static_argnums = (static_argnums,)
    static = tuple(static_argnums)
    checkpointed = jax.checkpoint(fn, policy=chosen, prevent_cse=prevent_cse,
                                  static_argnums=static)
    if not chosen.required:
        return checkpointed
    checked: set[Any] = set()

    @functools.wraps(fn)
    def tag_checked(*args: Any, **kwargs: Any) -> Any:
        key = _signature(args, kwargs)
        if key is None or key not in checked:
            jaxpr = jax.make_jaxpr(fn, static_argnums=static)(*_abstract(args),
                                                               **_abstract(kwargs))
            check_tags(chosen, jaxpr)
            if key is not None:
                checked.add(key)
        return checkpointed(*args, **kwargs)

    return tag_checked


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
