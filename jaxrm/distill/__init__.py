"""Knowledge-distillation losses as plain functions.

Every loss takes student and teacher arrays, treats the teacher as a constant
(``stop_gradient``), and returns one value per example (the optax
convention): the caller reduces, e.g. ``loss.mean()`` or, with a ``mask``
for padded examples or tokens, ``loss.sum() / mask.sum()``. All work under
``jit``, ``grad`` and ``vmap`` and accept bfloat16 inputs (computed in at least
float32, returned in the inputs' dtype).

* logits ``[..., classes]``: :func:`kd`, :func:`soft_cross_entropy`,
  :func:`kd_with_labels` (Hinton et al. 2015);
* features ``[batch, ...]``: :func:`hint` (FitNets), :func:`attention_transfer`
  (Zagoruyko & Komodakis 2017), :func:`cosine`;
* relations within a batch ``[batch, ...]``: :func:`rkd_distance`,
  :func:`rkd_angle` (Park et al. 2019), :func:`pkt` (Passalis & Tefas 2018).
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
