"""Make training fit in device memory: remat, memory reports, batch fitting, sharding.

* Rematerialization: :data:`POLICIES`, :func:`policy`, :func:`remat`,
  :func:`residuals`, :func:`residual_bytes`.
* Reports read from the compiled executable: :func:`report` ->
  :class:`MemoryReport`, :func:`device_budget`.
* Fitting to a budget: :func:`fit_batch`, :func:`choose_policy`, and
  :func:`accumulate` (gradient accumulation over micro-batches).
* Sharding: :func:`mesh`, :func:`rules`, :func:`fsdp`, :func:`data_sharding`,
  :func:`shard`, :func:`per_device_bytes`.
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
