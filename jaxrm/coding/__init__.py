"""Compressed storage: sparse relative indices, Huffman and ANS coding, the ``.jrm`` file.

``encode`` turns a pruned and quantized parameter tree into bytes (Deep
Compression's storage format: relative indices with filler zeros, codebook
indices or integer values, entropy coded); ``decode`` gives back exactly what
``quant.dequantize`` gives. ``save``/``load`` write and read files atomically,
and ``report`` prints the per-layer size table of Deep Compression.
"""

from jaxrm.coding._bits import FormatError
from jaxrm.coding._decode import decode
from jaxrm.coding._encode import encode
from jaxrm.coding._files import load, save
from jaxrm.coding._records import DEFAULT_MAX_ELEMENTS, MAGIC, VERSION
from jaxrm.coding._report import Report, ReportRow, report

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "MAGIC",
    "VERSION",
    "FormatError",
    "Report",
    "ReportRow",
    "decode",
    "encode",
    "load",
    "report",
    "save",
]
