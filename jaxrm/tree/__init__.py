"""Leaf paths, ``where`` selection, per-leaf settings, layouts, and counts for any pytree.

Every transform in jaxrm names leaves by their *path*: the keys from the root
to the leaf joined by ``/`` (``"Dense_0/kernel"``, ``"layers/3/attn/q"``); the
``.value`` of a Flax NNX variable is dropped.

* ``where`` chooses leaves: ``None`` ([jaxrm.tree.weights][], by role), a
  regular expression searched in the path, or a callable ``(path, leaf)``.
* Per-leaf settings ([jaxrm.tree.resolve][]): a scalar, a pytree of the
  params' structure, a callable ``(path, leaf) -> value``, or a list of
  ``(regex, value)`` rules, first match wins ([jaxrm.tree.Rules][]).
* Layouts ([jaxrm.tree.layouts][]): which axes of a leaf stack independent
  layers, which are output channels and which are contracted.
"""

from jaxrm.tree._infer import STACKED_NAMES, layouts
from jaxrm.tree._layout import Layout
from jaxrm.tree._paths import (
    aligned,
    check_matches,
    compile_path_regex,
    is_array,
    leaves_with_paths,
    path_str,
    paths,
)
from jaxrm.tree._select import (
    Where,
    arrays,
    count,
    map_selected,
    nbytes,
    predicate,
    select,
    selected,
    weights,
)
from jaxrm.tree._settings import NO_DEFAULT, Rules, resolve, resolve_tree

__all__ = [
    "NO_DEFAULT",
    "STACKED_NAMES",
    "Layout",
    "Rules",
    "Where",
    "aligned",
    "arrays",
    "check_matches",
    "compile_path_regex",
    "count",
    "is_array",
    "layouts",
    "leaves_with_paths",
    "map_selected",
    "nbytes",
    "path_str",
    "paths",
    "predicate",
    "resolve",
    "resolve_tree",
    "select",
    "selected",
    "weights",
]
