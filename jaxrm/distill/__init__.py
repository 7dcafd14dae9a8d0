"""Knowledge-distillation losses as plain functions.

Every loss takes student and teacher arrays, treats the teacher as a constant
(``stop_gradient``), and returns one value per example (the optax
convention): the caller reduces, e.g. ``loss.mean()`` or, with a ``mask``
for padded examples or tokens, ``loss.sum() / mask.sum()``. All work under
``jit``, ``grad`` and ``vmap`` and accept bfloat16 inputs (computed in at least
float32, returned in the inputs' dtype).

* logits ``[..., classes]``: [`kd`][jaxrm.distill.kd],
  [`soft_cross_entropy`][jaxrm.distill.soft_cross_entropy],
  [`kd_with_labels`][jaxrm.distill.kd_with_labels] (Hinton et al. 2015);
* features ``[batch, ...]``: [`hint`][jaxrm.distill.hint] (FitNets),
  [`attention_transfer`][jaxrm.distill.attention_transfer]
  (Zagoruyko & Komodakis 2017), [`cosine`][jaxrm.distill.cosine];
* relations within a batch ``[batch, ...]``: [`rkd_distance`][jaxrm.distill.rkd_distance],
  [`rkd_angle`][jaxrm.distill.rkd_angle] (Park et al. 2019), [`pkt`][jaxrm.distill.pkt] (Passalis &
  Tefas 2018).
"""

from jaxrm.distill._features import attention_transfer, cosine, hint
from jaxrm.distill._logits import kd, kd_with_labels, soft_cross_entropy
from jaxrm.distill._relational import pkt, rkd_angle, rkd_distance

__all__ = [
    "kd",
    "soft_cross_entropy",
    "kd_with_labels",
    "hint",
    "attention_transfer",
    "cosine",
    "rkd_distance",
    "rkd_angle",
    "pkt",
]
