"""Compression to a byte budget, and joint pruning with quantization.

[`allocate`][jaxrm.budget.allocate] picks bits and sparsity per leaf from a menu so that the
``.jrm`` file fits a byte budget with the least Hessian-weighted error;
[`sparsegpt_quant`][jaxrm.budget.sparsegpt_quant] prunes and quantizes in one SparseGPT pass. This
package may import both ``prune`` and ``quant`` (they do not import each other).
"""

from jaxrm.budget._allocate import MENU, Allocation, Option, allocate, compress
from jaxrm.budget._joint import sparsegpt_quant

__all__ = ["MENU", "Allocation", "Option", "allocate", "compress", "sparsegpt_quant"]
