"""``checkpoint_name`` tags in a traced function, to check ``names:`` policies against."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.extend

__all__ = ["NamedPolicy", "check_regions", "check_tags", "tags_of"]


class NamedPolicy:
    """A ``jax.checkpoint`` policy that remembers which tags it needs and where it applies.

    It behaves exactly as the wrapped policy; the extra attributes let a jaxpr
    walk find the checkpointed region it governs (the policy object is a
    parameter of the region's equation) and compare the tags inside with
    ``required``.
    """

    def __init__(self, fn: Callable[..., Any], name: str, required: tuple[str, ...],
                 where: str):
        self.fn = fn
        self.name = name
        self.required = required
        self.where = where

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"NamedPolicy({self.name!r} at {self.where!r})"


def _sub_jaxprs(params: dict[str, Any]) -> Iterator[Any]:
    def walk(v: Any) -> Iterator[Any]:
        if isinstance(v, jax.extend.core.ClosedJaxpr):
            yield v.jaxpr
        elif isinstance(v, jax.extend.core.Jaxpr):
            yield v
        elif isinstance(v, tuple | list):
            for item in v:
                yield from walk(item)

    for value in params.values():
        yield from walk(value)


def _eqns(jaxpr: Any) -> Iterator[Any]:
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in _sub_jaxprs(eqn.params):
            yield from _eqns(sub)


def tags_of(jaxpr: Any) -> set[str]:
    """Returns every ``checkpoint_name`` tag in a (closed) jaxpr, nested ones included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    return {e.params["name"] for e in _eqns(jaxpr) if e.primitive.name == "name"}


def _missing_message(policy: NamedPolicy, found: set[str]) -> str:
    missing = [n for n in policy.required if n not in found]
    have = ", ".join(sorted(found)) or "none"
    return (
        f"policy={policy.name!r} for {policy.where} names checkpoint_name tag(s) "
        f"{missing} that the function never tags (tags found: {have}); a policy saving "
        "untagged names saves nothing, like 'full'. Tag the values with "
        "jax.ad_checkpoint.checkpoint_name(x, name) or fix the names"
    )


def check_tags(policy: NamedPolicy, jaxpr: Any) -> None:
    """Raises ``ValueError`` if a tag ``policy`` needs is not in ``jaxpr``."""
    found = tags_of(jaxpr)
    if any(n not in found for n in policy.required):
        raise ValueError(_missing_message(policy, found))


def check_regions(jaxpr: Any) -> int:
    """Checks every checkpointed region governed by a ``NamedPolicy``.

    Returns:
      The number of regions checked.

    Raises:
      ValueError: a region's policy needs a tag its body does not carry.
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    checked = 0
    for eqn in _eqns(jaxpr):
        pol = eqn.params.get("policy")
        if isinstance(pol, NamedPolicy) and pol.required:
            body = eqn.params.get("jaxpr")
            check_tags(pol, body)
            checked += 1
    return checked
