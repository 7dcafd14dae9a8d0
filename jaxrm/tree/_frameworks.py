"""What the frameworks say about a leaf: Equinox module types and Flax partition names.

Nothing here imports a framework: a tree can only hold Equinox modules or Flax
boxes if the user already imported that framework, so the types are looked up
in ``sys.modules``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import jax

from jaxrm.tree._paths import is_array, path_str

__all__ = ["LeafInfo", "leaf_info"]

# Equinox layers whose `weight` is a matmul/conv/embedding weight, and those
# whose `weight` is a norm scale (never a default pruning/quantization target).
EQX_WEIGHT_MODULES = ("Linear", "Conv", "ConvTranspose", "Embedding")
EQX_NORM_MODULES = ("LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm")


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """Framework facts about one leaf.

    Attributes:
      module: the Equinox layer family holding the leaf (``"Linear"``,
        ``"Conv"``, ``"ConvTranspose"``, ``"Embedding"``, ``"LayerNorm"``, ...).
      field: the leaf's field in that layer (``"weight"`` or ``"bias"``).
      rank: the leaf's rank in one layer (extra leading axes are stacked layers).
      names: per-axis partition names from Flax metadata (``nn.Partitioned``,
        ``nn.LogicallyPartitioned``, NNX ``out_sharding``/``sharding_names``).
    """

    module: str | None = None
    field: str | None = None
    rank: int | None = None
    names: tuple | None = None


def _eqx_types() -> tuple[type, ...]:
    eqx = sys.modules.get("equinox")
    if eqx is None:
        return ()
    names = EQX_WEIGHT_MODULES + EQX_NORM_MODULES
    return tuple(getattr(eqx.nn, n) for n in names if hasattr(eqx.nn, n))


def _box_types() -> tuple[type, ...]:
    types: list[type] = []
    meta = sys.modules.get("flax.core.meta")
    if meta is not None and hasattr(meta, "Partitioned"):
        types.append(meta.Partitioned)  # LogicallyPartitioned subclasses it
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and hasattr(nnx, "Variable"):
        types.append(nnx.Variable)
    return tuple(types)


def _family(module: Any) -> str:
    eqx = sys.modules["equinox"]
    for name in EQX_WEIGHT_MODULES + EQX_NORM_MODULES:
        cls = getattr(eqx.nn, name, None)
        if cls is not None and isinstance(module, cls):
            return name
    return type(module).__name__


def _eqx_rank(family: str, module: Any, field: str) -> int | None:
    """The rank of ``module.<field>`` in one unstacked layer."""
    if family == "Linear":
        out_scalar = getattr(module, "out_features", None) == "scalar"
        in_scalar = getattr(module, "in_features", None) == "scalar"
        if field == "bias":
            return 0 if out_scalar else 1
        return (0 if out_scalar else 1) + (0 if in_scalar else 1)
    if family in ("Conv", "ConvTranspose"):
        nsd = getattr(module, "num_spatial_dims", None)
        if not isinstance(nsd, int):
            return None
        return nsd + (2 if field == "weight" else 1)
    if family == "Embedding":
        return 2 if field == "weight" else None
    if family in ("LayerNorm", "RMSNorm"):
        shape = getattr(module, "shape", None)
        if isinstance(shape, int):
            return 1
        return len(shape) if isinstance(shape, tuple) else None
    return 1  # GroupNorm, BatchNorm: one value per channel


def _box_names(box: Any) -> tuple | None:
    names = getattr(box, "names", None)
    if names is None and hasattr(box, "get_metadata"):
        try:
            md = box.get_metadata()
        except Exception:  # a variable type with unusual metadata: nothing to learn
            return None
        for key in ("out_sharding", "sharding_names", "sharding"):
            if md.get(key):
                names = md[key]
                break
    if names is None or isinstance(names, str):
        return None
    try:
        return tuple(names)
    except TypeError:  # a Sharding object rather than names
        return None


def _join(path: str, field: str) -> str:
    return f"{path}/{field}" if path else field


def leaf_info(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> dict[str, LeafInfo]:
    """Maps leaf paths to what Equinox modules and Flax boxes in ``tree`` say about them.

    One walk of the tree, stopping at Equinox layers and Flax boxes; leaves
    with nothing to say are absent from the result.
    """
    eqx_types = _eqx_types()
    box_types = _box_types()
    if not eqx_types and not box_types:
        return {}
    stop_types = eqx_types + box_types

    def stop(x):
        return isinstance(x, stop_types) or (is_leaf is not None and is_leaf(x))

    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=stop)
    out: dict[str, LeafInfo] = {}
    for kp, node in flat:
        if eqx_types and isinstance(node, eqx_types):
            family = _family(node)
            base = path_str(kp)
            for field in ("weight", "bias"):
                value = getattr(node, field, None)
                if is_array(value):
                    out[_join(base, field)] = LeafInfo(
                        module=family, field=field, rank=_eqx_rank(family, node, field)
                    )
        elif box_types and isinstance(node, box_types):
            names = _box_names(node)
            if names is not None:
                out[path_str(kp)] = LeafInfo(names=names)
    return out
