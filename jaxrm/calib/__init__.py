"""Calibration statistics for one-shot compression (GPTQ, SparseGPT, Wanda, AWQ).

[`collect`][jaxrm.calib.collect] runs a model's forward function on a few calibration batches
and records, for every weight that feeds a matmul or convolution and for each
stacked slice of it, the input second moment ``H = sum x^T x``, per-feature
activation norms and magnitudes. ``prune`` and ``quant`` both read these
statistics, so this package stands on ``jaxrm.tree`` alone. [`sequential`][jaxrm.calib.sequential]
compresses layer by layer, each calibrated on the outputs of the layers
already compressed.
"""

from jaxrm.calib._collect import collect
from jaxrm.calib._sequential import sequential
from jaxrm.calib._stats import LeafStats, Stats

__all__ = ["LeafStats", "Stats", "collect", "sequential"]
