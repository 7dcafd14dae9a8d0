"""Pruning: scores, exact masks, structured patterns, distributions, schedules, optax.

Masks are pytrees of the parameters' structure holding ``bool`` arrays
(``True`` = kept) at pruned leaves and ``None`` elsewhere. A typical flow::

    scores = prune.magnitude(params)
    m = prune.masks(scores, 0.9, scope="global")
    params = prune.apply(params, m)
    print(prune.summary(m))

or, during training, ``prune.sparsify(optax.adam(1e-3), prune.polynomial(0.9, 0, 1000))``.
"""

from jaxrm.prune._distributions import erk, uniform
from jaxrm.prune._group_scores import group_keep, group_scores
from jaxrm.prune._groups import Group, groups
from jaxrm.prune._masks import apply, masks, threshold
from jaxrm.prune._oneshot import sparsegpt, wanda
from jaxrm.prune._optax import SparsifyState, masks_of, sparsify
from jaxrm.prune._patterns import NM, Blocks, Channels, blocks, channels, nm
from jaxrm.prune._regrow import rigl, set_, static
from jaxrm.prune._schedules import constant, iterative, one_shot, polynomial
from jaxrm.prune._scores import magnitude, random, saliency
from jaxrm.prune._shrink import Shrunk, group_masks, shrink
from jaxrm.prune._states import SparseTrainingState
from jaxrm.prune._ste import ste, ste_params
from jaxrm.prune._summary import Summary, SummaryRow, summary

__all__ = [
    "wanda",
    "sparsegpt",
    "NM",
    "Blocks",
    "Channels",
    "Group",
    "Shrunk",
    "SparsifyState",
    "Summary",
    "SummaryRow",
    "apply",
    "blocks",
    "channels",
    "constant",
    "erk",
    "group_keep",
    "group_masks",
    "group_scores",
    "groups",
    "iterative",
    "magnitude",
    "masks",
    "masks_of",
    "nm",
    "one_shot",
    "polynomial",
    "random",
    "saliency",
    "shrink",
    "sparsify",
    "summary",
    "threshold",
    "uniform",
    "SparseTrainingState",
    "rigl",
    "set_",
    "static",
    "ste",
    "ste_params",
]
