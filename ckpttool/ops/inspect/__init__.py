"""What is in a checkpoint: the inspect report, per-tensor statistics, optimizer state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckpttool.lazy import lazy_exports

if TYPE_CHECKING:
    from ckpttool.ops.inspect.optimizer import OptimizerReport, ParamState, optimizer_files_beside, optimizers
    from ckpttool.ops.inspect.report import (
        Count,
        Counts,
        InspectReport,
        ObjectRow,
        TensorRow,
        TreeRow,
        count,
        describe,
        entry_values,
        inspect_checkpoint,
        jsonable,
        select,
        top_level_summary,
        tree,
    )
    from ckpttool.ops.inspect.stats import TensorStats, all_stats, non_finite, tensor_stats

_EXPORTS = {
    "Count": ".report",
    "Counts": ".report",
    "InspectReport": ".report",
    "ObjectRow": ".report",
    "TensorRow": ".report",
    "TreeRow": ".report",
    "count": ".report",
    "describe": ".report",
    "entry_values": ".report",
    "inspect_checkpoint": ".report",
    "jsonable": ".report",
    "select": ".report",
    "top_level_summary": ".report",
    "tree": ".report",
    "TensorStats": ".stats",
    "all_stats": ".stats",
    "non_finite": ".stats",
    "tensor_stats": ".stats",
    "OptimizerReport": ".optimizer",
    "ParamState": ".optimizer",
    "optimizers": ".optimizer",
    "optimizer_files_beside": ".optimizer",
}
__all__ = [
    "Count",
    "Counts",
    "InspectReport",
    "ObjectRow",
    "OptimizerReport",
    "ParamState",
    "TensorRow",
    "TensorStats",
    "TreeRow",
    "all_stats",
    "count",
    "describe",
    "entry_values",
    "inspect_checkpoint",
    "jsonable",
    "non_finite",
    "optimizer_files_beside",
    "optimizers",
    "select",
    "tensor_stats",
    "top_level_summary",
    "tree",
]
__getattr__ = lazy_exports(__name__, _EXPORTS)
