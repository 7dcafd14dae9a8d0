"""The optimizer state of sparse training from scratch (RigL, SET, static)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

__all__ = ["SparseTrainingState"]


class SparseTrainingState(NamedTuple):
    """State of [jaxrm.prune.rigl][], [jaxrm.prune.set_][] and [jaxrm.prune.static][].

    Attributes:
      count: the number of updates done (int32); mask updates happen at
        ``count % every == 0`` while ``count < end_step``.
      masks: the current masks, ``bool`` arrays (``True`` = active) at sparse
        leaves and ``None`` elsewhere; each leaf (each stacked slice) keeps
        exactly ``round((1 - s) * n)`` active entries at every step.
      inner_state: the wrapped optimizer's state.
      key: the raw PRNG key data (``uint32``) of SET's growth, folded in with
        the step (kept in the state, as optax's ``add_noise`` does, so a
        compiled update serves every seed and orbax saves it).
    """

    count: jax.Array
    masks: Any
    inner_state: Any
    key: Any = None
