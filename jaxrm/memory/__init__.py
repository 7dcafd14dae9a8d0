"""Make training fit in device memory: remat, memory reports, batch fitting, sharding.

* Rematerialization: [`POLICIES`][jaxrm.memory.POLICIES], [`policy`][jaxrm.memory.policy],
  [`remat`][jaxrm.memory.remat],
  [`residuals`][jaxrm.memory.residuals], [`residual_bytes`][jaxrm.memory.residual_bytes].
* Reports read from the compiled executable: [`report`][jaxrm.memory.report] ->
  [`MemoryReport`][jaxrm.memory.MemoryReport], [`device_budget`][jaxrm.memory.device_budget].
* Fitting to a budget: [`fit_batch`][jaxrm.memory.fit_batch],
  [`choose_policy`][jaxrm.memory.choose_policy], and
  [`accumulate`][jaxrm.memory.accumulate] (gradient accumulation over micro-batches).
* Sharding: [`mesh`][jaxrm.memory.mesh], [`rules`][jaxrm.memory.rules], [`fsdp`][jaxrm.memory.fsdp],
  [`data_sharding`][jaxrm.memory.data_sharding],
  [`shard`][jaxrm.memory.shard], [`per_device_bytes`][jaxrm.memory.per_device_bytes].
"""

from jaxrm.memory._accumulate import accumulate
from jaxrm.memory._fit import choose_policy, fit_batch
from jaxrm.memory._remat import POLICIES, Residual, policy, remat, residual_bytes, residuals
from jaxrm.memory._report import MemoryReport, device_budget, format_bytes, report
from jaxrm.memory._sharding import (
    Rules,
    data_sharding,
    fsdp,
    mesh,
    per_device_bytes,
    rules,
    shard,
)

__all__ = [
    "POLICIES",
    "MemoryReport",
    "Residual",
    "Rules",
    "accumulate",
    "choose_policy",
    "data_sharding",
    "device_budget",
    "fit_batch",
    "format_bytes",
    "fsdp",
    "mesh",
    "per_device_bytes",
    "policy",
    "remat",
    "report",
    "residual_bytes",
    "residuals",
    "rules",
    "shard",
]
