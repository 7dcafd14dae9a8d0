"""Remat policies applied to the submodules of a Flax model by path rules, paths unchanged."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxrm.memory._remat import _abstract, _signature, named_policy
from jaxrm.memory._tags import check_regions, check_tags
from jaxrm.tree import compile_path_regex

__all__ = ["RematLinen", "remat_modules"]

PolicyRules = Sequence[tuple[str, Any]]


def _compile_rules(rules: Any) -> list[tuple[re.Pattern[str], Any]]:
    if isinstance(rules, str) or callable(rules):
        return [(re.compile(r".+"), rules)]  # every module but the root (outermost wins)
    if not isinstance(rules, Sequence):
        raise TypeError(
            "rules must be a policy name or a list of (regex, policy) pairs, got "
            f"{type(rules).__name__}"
        )
    out = []
    for i, pair in enumerate(rules):
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise TypeError(f"rules[{i}] must be a (regex, policy) pair, got {pair!r}")
        pattern, pol = pair
        if pol is not None and not (isinstance(pol, str) or callable(pol)):
            raise TypeError(
                f"rules[{i}]: the policy must be a name, a policy callable or None, got {pol!r}"
            )
        out.append((compile_path_regex(pattern, f"rules[{i}]"), pol))
    return out


def _match(rules: list[tuple[re.Pattern[str], Any]], path: str) -> Any:
    """The policy of the first rule found in ``path``; None for no remat."""
    if not path:
        return None  # the root: remat of the whole model is remat(loss), not a module rule
    for pattern, pol in rules:
        if pattern.search(path):
            return None if pol == "none" else pol
    return None


def _is_dynamic(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def _split_static(args: tuple[Any, ...], kwargs: dict[str, Any]):
    """Array leaves go through the checkpoint; Python values (``train=True``) stay static."""
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    dynamic = [i for i, x in enumerate(leaves) if _is_dynamic(x)]

    def rebuild(values: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        filled = list(leaves)
        for i, v in zip(dynamic, values):
            filled[i] = v
        return jax.tree_util.tree_unflatten(treedef, filled)

    return [leaves[i] for i in dynamic], rebuild


# ---------------------------------------------------------------------------- Linen

_linen_state = threading.local()


def _linen_interceptor(rules, prevent_cse: bool):
    from flax import linen as nn

    def intercept(next_fun, args, kwargs, context):
        if getattr(_linen_state, "depth", 0) or context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        path = "/".join(str(p) for p in context.module.path)
        chosen = _match(rules, path)
        if chosen is None:
            return next_fun(*args, **kwargs)
        raw = context.orig_method.func  # the undecorated method: no interceptors in the way
        dynamic, rebuild = _split_static(args, kwargs)

        @functools.wraps(raw)  # keeps the `compact` marker, so Flax sets up the scope
        def body(module, *values):
            a, k = rebuild(values)
            return raw(module, *a, **k)

        lifted = nn.checkpoint(
            body, policy=named_policy(chosen, f"module {path!r}"), prevent_cse=prevent_cse
        )
        # Inside the checkpoint the module's own call passes through, and submodules are
        # not rematted again (the outermost match wins).
        _linen_state.depth = getattr(_linen_state, "depth", 0) + 1
        try:
            return lifted(context.module, *dynamic)
        finally:
            _linen_state.depth -= 1

    return intercept


class RematLinen:
    """A Linen module whose matching submodules run under remat policies.

    ``init`` and ``apply`` are the module's own, run with a method interceptor
    that wraps each matching submodule call in ``nn.checkpoint`` with its
    policy; parameter and collection paths are exactly the module's, so
    variables of the plain module load as they are. Other attributes are
    the module's.

    Attributes:
      module: the wrapped ``flax.linen.Module``.
      rules: the ``(regex, policy)`` rules it was built with.
    """

    def __init__(self, module: Any, rules: Any, prevent_cse: bool):
        self.module = module
        self.rules = rules
        self._compiled = _compile_rules(rules)
        self._prevent_cse = prevent_cse
        self._checked: set[Any] = set()
        self._needs_check = any(
            isinstance(p, str) and p.startswith(("names:", "offload_names:"))
            for _, p in self._compiled
        )

    def _run(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from flax import linen as nn

        fn = getattr(self.module, method)
        interceptor = _linen_interceptor(self._compiled, self._prevent_cse)
        if self._needs_check:
            self._check_tags(fn, interceptor, args, kwargs)
        with nn.intercept_methods(interceptor):
            return fn(*args, **kwargs)

    def _check_tags(self, fn, interceptor, args, kwargs) -> None:
        from flax import linen as nn

        key = _signature(args, kwargs)
        if key is not None and key in self._checked:
            return
        dynamic, rebuild = _split_static(args, kwargs)

        def traced(*values):
            a, k = rebuild(values)
            with nn.intercept_methods(interceptor):
                return fn(*a, **k)

        check_regions(jax.make_jaxpr(traced)(*_abstract(dynamic)))
        if key is not None:
            self._checked.add(key)

    def init(self, *args: Any, **kwargs: Any) -> Any:
        """``module.init`` with the remat rules applied."""
        return self._run("init", args, kwargs)

    def init_with_output(self, *args: Any, **kwargs: Any) -> Any:
        """``module.init_with_output`` with the remat rules applied."""
        return self._run("init_with_output", args, kwargs)

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        """``module.apply`` with the remat rules applied."""
        return self._run("apply", args, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["module"], name)

    def __repr__(self) -> str:
        return f"RematLinen({type(self.module).__name__}, rules={self.rules!r})"


# ---------------------------------------------------------------------------- NNX


def _nnx_remat_class(cls: type, chosen: Any, path: str, prevent_cse: bool) -> type:
    from flax import nnx

    pol = named_policy(chosen, f"module {path!r}")
    original = cls.__call__
    checked: set[Any] = set()

    def call(self, *args, **kwargs):
        dynamic, rebuild = _split_static(args, kwargs)

        def body(module, *values):
            a, k = rebuild(values)
            return original(module, *a, **k)

        if pol.required:
            key = _signature(args, kwargs)
            if key is None or key not in checked:
                graphdef, state = nnx.split(self)

                def pure(state, *values):
                    return body(nnx.merge(graphdef, state), *values)

                check_tags(pol, jax.make_jaxpr(pure)(_abstract(state), *_abstract(dynamic)))
                if key is not None:
                    checked.add(key)
        return nnx.remat(body, policy=pol, prevent_cse=prevent_cse)(self, *dynamic)

    functools.update_wrapper(call, original)
    return type(cls.__name__, (cls,), {"__call__": call, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def _remat_nnx(model: Any, rules, prevent_cse: bool) -> Any:
    from flax import nnx

    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)  # new module objects, same arrays: the input is untouched
    matched: list[tuple[str, Any, Any]] = []
    found = [("/".join(str(p) for p in kp), module) for kp, module in nnx.iter_modules(copy)]
    found.sort(key=lambda item: item[0].count("/") if item[0] else -1)  # parents first
    for path, module in found:
        if isinstance(module, nnx.List | nnx.Dict) or "__call__" not in dir(type(module)):
            continue  # containers are not called
        if any(path.startswith(m + "/") for m, _, _ in matched):
            continue  # inside a rematted module: the outermost match wins
        chosen = _match(rules, path)
        if chosen is not None:
            matched.append((path, module, chosen))
    for path, module, chosen in matched:
        object.__setattr__(
            module, "__class__", _nnx_remat_class(type(module), chosen, path, prevent_cse)
        )
    return copy


def remat_modules(model: Any, rules: Any, *, prevent_cse: bool = True) -> Any:
    """Applies remat policies to a Flax model's submodules chosen by path rules.

    Parameter paths do not change: a checkpoint of the plain model loads into
    the rematted one as it is (unlike wrapping a class in ``nn.remat``, which
    renames auto-named submodules ``Block_0`` -> ``CheckpointBlock_0``).

    A module's path is its attribute / auto-name path joined by ``/``
    (``"Block_0"``, ``"encoder/layers"``, ``"blocks/3/attn"``); the rules are
    searched in it (``re.search``), first match wins, the outermost matching
    module is rematted and its submodules run inside it. The body of an
    ``nn.scan`` / ``nnx.scan`` is matched by the scanned module's path, so
    each layer of the scan is checkpointed (the compiled temporaries of a
    scanned stack shrink, not only the residual count).

    Array arguments pass through the checkpoint; Python values (``train=True``,
    ``deterministic=False``) stay static.

    Args:
      model: a ``flax.linen.Module`` or a ``flax.nnx.Module``.
      rules: a list of ``(regex, policy)`` pairs, a policy being a name of
        [jaxrm.memory.POLICIES][], ``"names:a,b"``, ``"offload_names:a,b"``,
        a policy callable, or ``None`` / ``"none"`` (leave the module alone);
        or one policy for every submodule (the root's children are then the
        outermost matches).
      prevent_cse: passed to the lifted checkpoint (``False`` is faster for
        modules that only run inside a scan).

    Returns:
      For Linen, a [jaxrm.memory.RematLinen][] whose ``init``/``apply`` are
      the module's with the rules applied. For NNX, a new module (the input is
      not modified) sharing the input's arrays, whose matching submodules call
      through ``nnx.remat``; ``nnx.split`` of it gives the same state paths.

    Raises:
      TypeError: ``model`` is not a Flax module, or malformed rules.
      ValueError: an unknown policy or bad regex; (when called) a
        ``names:`` policy naming a tag the module never produces.
    """
    from flax import linen as nn
    from flax import nnx

    compiled = _compile_rules(rules)
    for _, pol in compiled:
        if pol is not None and pol != "none":
            named_policy(pol, "rules")  # unknown names fail here, not at the first call
    if isinstance(model, nn.Module):
        return RematLinen(model, rules, prevent_cse)
    if isinstance(model, nnx.Module):
        return _remat_nnx(model, compiled, prevent_cse)
    raise TypeError(
        f"model must be a flax.linen.Module or a flax.nnx.Module, got {type(model).__name__}; "
        "for a plain function use memory.remat"
    )
