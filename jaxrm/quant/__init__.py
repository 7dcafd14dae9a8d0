"""Quantization: uniform PTQ and QAT, and trained weight sharing with k-means codebooks.

* [`uniform`][jaxrm.quant.uniform] turns selected leaves into ``QArray``
  (integers, scale, zero point; per slice, group-wise, packed int4, masks);
* [`fake_quant`][jaxrm.quant.fake_quant] /
  [`fake_quant_tree`][jaxrm.quant.fake_quant_tree] quantize-dequantize with a
  straight-through gradient for quantization-aware training;
* [`kmeans`][jaxrm.quant.kmeans] turns selected leaves into ``Codebook``
  (indices into shared centroids), skipping pruned entries;
* [`partition`][jaxrm.quant.partition] / [`combine`][jaxrm.quant.combine] /
  [`trainable`][jaxrm.quant.trainable] fine-tune centroids with any optax
  optimizer (Deep Compression's trained quantization);
* [`dequantize`][jaxrm.quant.dequantize] gives back float parameters;
* [`quantized`][jaxrm.quant.quantized] runs a function on quantized trees
  without a float copy (weight-only or int8 x int8), with static activation
  ranges from [`calibrate_activations`][jaxrm.quant.calibrate_activations];
* [`lsq`][jaxrm.quant.lsq] / [`lsq_apply`][jaxrm.quant.lsq_apply] /
  [`lsq_export`][jaxrm.quant.lsq_export]: learned step size QAT.
"""

from jaxrm.quant._awq import awq, smooth
from jaxrm.quant._calibrate import calibrate_activations
from jaxrm.quant._execute import quantized
from jaxrm.quant._fake import fake_quant, fake_quant_tree
from jaxrm.quant._gptq import gptq, rtn
from jaxrm.quant._kmeans import kmeans
from jaxrm.quant._lsq import LsqArray, lsq, lsq_apply, lsq_export
from jaxrm.quant._train import combine, partition, trainable
from jaxrm.quant._types import Codebook, QArray, dequantize, is_quantized
from jaxrm.quant._uniform import uniform

__all__ = [
    "smooth",
    "rtn",
    "gptq",
    "awq",
    "Codebook",
    "LsqArray",
    "QArray",
    "calibrate_activations",
    "combine",
    "dequantize",
    "fake_quant",
    "fake_quant_tree",
    "is_quantized",
    "kmeans",
    "lsq",
    "lsq_apply",
    "lsq_export",
    "partition",
    "quantized",
    "trainable",
    "uniform",
]
