"""Quantization: uniform PTQ and QAT, and trained weight sharing with k-means codebooks.

* [`uniform`][jaxrm.quant.uniform] turns selected leaves into ``QArray`` (integers, scale, zero
  point);
* [`fake_quant`][jaxrm.quant.fake_quant] / [`fake_quant_tree`][jaxrm.quant.fake_quant_tree]
  quantize-dequantize with a
  straight-through gradient for quantization-aware training;
* [`kmeans`][jaxrm.quant.kmeans] turns selected leaves into ``Codebook`` (indices into shared
  centroids), skipping pruned entries;
* [`partition`][jaxrm.quant.partition] / [`combine`][jaxrm.quant.combine] /
  [`trainable`][jaxrm.quant.trainable] fine-tune centroids
  with any optax optimizer (Deep Compression's trained quantization);
* [`dequantize`][jaxrm.quant.dequantize] gives back float parameters.
"""

from jaxrm.quant._awq import awq, smooth
from jaxrm.quant._gptq import gptq, rtn
from jaxrm.quant._kmeans import kmeans
from jaxrm.quant._train import combine, partition, trainable
from jaxrm.quant._types import Codebook, QArray, dequantize, is_quantized
from jaxrm.quant._uniform import fake_quant, fake_quant_tree, uniform

__all__ = [
    "smooth",
    "rtn",
    "gptq",
    "awq",
    "Codebook",
    "QArray",
    "combine",
    "dequantize",
    "fake_quant",
    "fake_quant_tree",
    "is_quantized",
    "kmeans",
    "partition",
    "trainable",
    "uniform",
]
