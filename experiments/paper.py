"""The numbers of Deep Compression for LeNet-300-100 and LeNet-5, as data.

Source: S. Han, H. Mao, W. J. Dally, "Deep Compression: Compressing Deep Neural
Networks with Pruning, Trained Quantization and Huffman Coding", ICLR 2016,
arXiv:1510.00149 (v5): Table 1 (error and size), Table 2 (LeNet-300-100) and
Table 3 (LeNet-5), per layer. The pruned densities also appear in Han, Pool,
Tran, Dally, "Learning both Weights and Connections for Efficient Neural
Networks", NeurIPS 2015, Tables 2 and 3.

Percentages are kept as printed in the paper (``"8%"`` is 0.08 here); bits are
per kept weight; ``rate_pq``/``rate_pqh`` are the compressed size as a
fraction of the dense size after pruning+quantization and after Huffman coding.

Soft weight-sharing (Ullrich, Meeds, Welling, ICLR 2017, Table 1) is quoted as
later work.
"""

from __future__ import annotations

__all__ = ["LATER", "SOURCE", "TABLE1", "TABLES", "LayerRow"]

from typing import NamedTuple

SOURCE = (
    "Han, Mao, Dally. Deep Compression. ICLR 2016, arXiv:1510.00149 (Tables 1-3)"
)


class LayerRow(NamedTuple):
    """One row of the paper's Table 2 or 3."""

    layer: str
    weights: str  # as printed ("235K")
    density: float  # "Weights% (P)"
    weight_bits_pq: float
    weight_bits_pqh: float
    index_bits_pq: float
    index_bits_pqh: float
    rate_pq: float
    rate_pqh: float


# Table 1: error (top-1) and size, reference -> compressed.
TABLE1 = {
    "lenet-300-100": {
        "ref_error": 0.0164,
        "error": 0.0158,
        "ref_kb": 1070,
        "kb": 27,
        "ratio": 40,
    },
    "lenet-5": {
        "ref_error": 0.0080,
        "error": 0.0074,
        "ref_kb": 1720,
        "kb": 44,
        "ratio": 39,
    },
}

TABLES = {
    # Table 2: compression statistics for LeNet-300-100.
    "lenet-300-100": [
        LayerRow("ip1", "235K", 0.08, 6, 4.4, 5, 3.7, 0.031, 0.0232),
        LayerRow("ip2", "30K", 0.09, 6, 4.4, 5, 4.3, 0.038, 0.0304),
        LayerRow("ip3", "1K", 0.26, 6, 4.3, 5, 3.2, 0.157, 0.1270),
        LayerRow("total", "266K", 0.08, 6, 5.1, 5, 3.7, 0.031, 0.0249),
    ],
    # Table 3: compression statistics for LeNet-5.
    "lenet-5": [
        LayerRow("conv1", "0.5K", 0.66, 8, 7.2, 5, 1.5, 0.785, 0.6745),
        LayerRow("conv2", "25K", 0.12, 8, 7.2, 5, 3.9, 0.060, 0.0528),
        LayerRow("ip1", "400K", 0.08, 5, 4.5, 5, 4.5, 0.027, 0.0245),
        LayerRow("ip2", "5K", 0.19, 5, 5.2, 5, 3.7, 0.069, 0.0613),
        LayerRow("total", "431K", 0.08, 5.3, 4.1, 5, 4.4, 0.0305, 0.0255),
    ],
}

# Later work on the same models: soft weight-sharing (Ullrich et al., ICLR 2017).
LATER = {
    "lenet-300-100": {"method": "soft weight-sharing", "error": 0.0194, "ratio": 64},
    "lenet-5": {"method": "soft weight-sharing", "error": 0.0097, "ratio": 162},
}
