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
* Remat of Flax submodules by path rules, paths unchanged:
  [`remat_modules`][jaxrm.memory.remat_modules].
* 8-bit optimizer state: [`quantized_state`][jaxrm.memory.quantized_state].
* Adapting to memory: [`oom_guard`][jaxrm.memory.oom_guard] (split the batch on
  out-of-memory) and [`plan`][jaxrm.memory.plan] (the cheapest configuration that fits).
"""

from jaxrm.memory._accumulate import accumulate
from jaxrm.memory._fit import DEFAULT_MARGIN, choose_policy, fit_batch
from jaxrm.memory._guard import OOMGuard, oom_guard
from jaxrm.memory._modules import RematLinen, remat_modules
from jaxrm.memory._plan import Option, Plan, plan
from jaxrm.memory._qstate import (
    BlockQuantized,
    QuantizedState,
    dequantize_blocks,
    dynamic_map,
    linear_map,
    quantize_blocks,
    quantized_state,
)
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
    "BlockQuantized",
    "DEFAULT_MARGIN",
    "POLICIES",
    "MemoryReport",
    "OOMGuard",
    "Option",
    "Plan",
    "QuantizedState",
    "RematLinen",
    "Residual",
    "Rules",
    "accumulate",
    "choose_policy",
    "data_sharding",
    "dequantize_blocks",
    "device_budget",
    "dynamic_map",
    "fit_batch",
    "format_bytes",
    "fsdp",
    "linear_map",
    "mesh",
    "oom_guard",
    "per_device_bytes",
    "plan",
    "policy",
    "quantize_blocks",
    "quantized_state",
    "remat",
    "remat_modules",
    "report",
    "residual_bytes",
    "residuals",
    "rules",
    "shard",
]
