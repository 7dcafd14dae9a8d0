"""jaxrm: resource management of neural networks in JAX.

Make models smaller (``prune``, ``quant``, ``coding``, ``distill``) and make
training fit in device memory (``memory``). Every transform is a pure function
over parameter pytrees; see ``jaxrm.tree`` for paths and ``where`` selection.
"""

from jaxrm import budget, calib, coding, distill, memory, prune, quant, tree

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "budget",
    "calib",
    "coding",
    "distill",
    "memory",
    "prune",
    "quant",
    "tree",
]
