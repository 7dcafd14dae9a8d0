"""The settings of every Deep Compression run: one frozen dataclass, a table of named configs."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["CONFIGS", "Config", "get_config"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of one pipeline run (all epochs count full passes over 60k)."""

    name: str
    model: str
    batch: int = 128
    scan: bool = True  # one lax.scan per epoch; False: a jitted step per batch (convs on CPU)
    # stage 1: dense reference (SGD with momentum, cosine learning rate)
    dense_epochs: int = 15
    dense_lr: float = 0.1
    weight_decay: float = 5e-4
    augment: int = 0
    # stage 2: pruning to per-layer densities (kernel path -> kept fraction)
    densities: tuple[tuple[str, float], ...] = ()
    prune_mode: str = "iterative"  # "iterative" (Han et al. 2015) or "polynomial" (Zhu & Gupta)
    prune_rounds: int = 4  # iterative: rounds, density_r = target ** (r / rounds)
    prune_epochs: int = 2  # iterative: epochs per round; polynomial: epochs of the ramp
    prune_final_epochs: int = 4  # retraining after the last round / the ramp
    prune_lr: float = 0.01  # the paper: 1/10 of the original learning rate
    # stage 3: k-means weight sharing and centroid fine-tuning
    bits: tuple[tuple[str, int], ...] = ()  # leaf path -> bits (biases may be listed too)
    quant_epochs: int = 3
    quant_lr: float = 1e-4
    quant_batch: int = 500  # fewer, larger steps: the codebook gather/scatter dominates a step
    # distillation from the dense model (0 = off), in stages 2 and 3
    kd: float = 0.0
    temperature: float = 4.0
    # stage 4: coding
    entropy: str = "huffman"
    index_bits: int | None = 5

    def short(self) -> str:
        return f"{self.model}-{self.name}"


def _lenet300(name: str, **kw: Any) -> Config:
    return Config(name=name, model="lenet-300-100", **kw)


def _lenet5(name: str, **kw: Any) -> Config:
    return Config(name=name, model="lenet-5", **kw)


_P300 = (("ip1/kernel", 0.08), ("ip2/kernel", 0.09), ("ip3/kernel", 0.26))
_P5 = (("conv1/kernel", 0.66), ("conv2/kernel", 0.12), ("ip1/kernel", 0.08), ("ip2/kernel", 0.19))

CONFIGS: dict[tuple[str, str], Config] = {
    # The paper's settings: per-layer densities of Han et al. (2015), iterative
    # prune-retrain at 1/10 of the learning rate, 6-bit (LeNet-300-100) or
    # 8-bit conv / 5-bit fc (LeNet-5) linear-init k-means with centroid
    # fine-tuning, Huffman coding with 5-bit relative indices.
    ("lenet-300-100", "paper"): _lenet300(
        "paper", densities=_P300, bits=(("ip1/kernel", 6), ("ip2/kernel", 6), ("ip3/kernel", 6))
    ),
    ("lenet-5", "paper"): _lenet5(
        "paper",
        batch=64,
        scan=False,
        dense_epochs=12,
        dense_lr=0.05,
        densities=_P5,
        prune_epochs=1,
        prune_final_epochs=2,
        prune_lr=0.005,
        bits=(("conv1/kernel", 8), ("conv2/kernel", 8), ("ip1/kernel", 5), ("ip2/kernel", 5)),
        quant_epochs=2,
    ),
    # Beyond the paper: training on random translations (up to 2 pixels),
    # gradual (polynomial) pruning to lower densities with distillation from
    # the dense model, fewer bits on the large layers, quantized biases, rANS
    # coding with per-leaf index widths.
    ("lenet-300-100", "best"): _lenet300(
        "best",
        augment=2,
        densities=(("ip1/kernel", 0.036), ("ip2/kernel", 0.06), ("ip3/kernel", 0.20)),
        prune_mode="polynomial",
        prune_epochs=8,
        prune_final_epochs=6,
        kd=0.7,
        bits=(
            ("ip1/kernel", 4), ("ip2/kernel", 4), ("ip3/kernel", 5),
            ("ip1/bias", 5), ("ip2/bias", 5),
        ),
        quant_epochs=3,
        entropy="ans",
        index_bits=None,
    ),
    ("lenet-5", "best"): _lenet5(
        "best",
        batch=64,
        scan=False,
        dense_epochs=12,
        dense_lr=0.05,
        augment=2,
        # the paper's densities, but half of ip1 (400K of the 431K weights)
        densities=(
            ("conv1/kernel", 0.66), ("conv2/kernel", 0.12),
            ("ip1/kernel", 0.04), ("ip2/kernel", 0.19),
        ),
        prune_mode="polynomial",
        prune_epochs=4,
        prune_final_epochs=2,
        prune_lr=0.005,
        kd=0.7,
        bits=(
            ("conv1/kernel", 6), ("conv2/kernel", 5), ("ip1/kernel", 4), ("ip2/kernel", 5),
            ("ip1/bias", 5),
        ),
        quant_epochs=2,
        entropy="ans",
        index_bits=None,
    ),
}


def get_config(model: str, name: str, **overrides: Any) -> Config:
    """Returns the configuration ``name`` of ``model``, with fields overridden."""
    if (model, name) not in CONFIGS:
        raise ValueError(f"no config {name!r} for model {model!r}; have {sorted(CONFIGS)}")
    return dataclasses.replace(CONFIGS[model, name], **overrides)
