"""Writing a checkpoint's weights in another format: safetensors, `.pth`, DCP (`dcp/`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckpttool.lazy import lazy_exports

if TYPE_CHECKING:
    from ckpttool.ops.convert.converting import convert, destination_folder
    from ckpttool.ops.convert.dcp.ranks import Ranks
    from ckpttool.ops.convert.plan import ConvertOptions, ConvertReport, parse_size, rename
    from ckpttool.ops.convert.targets import TARGETS, ConvertTarget, default_target
    from ckpttool.ops.convert.unstack import layer_names, unstack_checkpoint
    from ckpttool.progress import NoProgress, Progress

_EXPORTS = {
    "ConvertOptions": ".plan",
    "ConvertReport": ".plan",
    "NoProgress": "ckpttool.progress",
    "Progress": "ckpttool.progress",
    "convert": ".converting",
    "destination_folder": ".converting",
    "parse_size": ".plan",
    "rename": ".plan",
    "Ranks": ".dcp.ranks",
    "TARGETS": ".targets",
    "ConvertTarget": ".targets",
    "default_target": ".targets",
    "layer_names": ".unstack",
    "unstack_checkpoint": ".unstack",
}
__all__ = [
    "ConvertOptions",
    "ConvertReport",
    "ConvertTarget",
    "NoProgress",
    "Progress",
    "Ranks",
    "TARGETS",
    "convert",
    "default_target",
    "destination_folder",
    "layer_names",
    "parse_size",
    "rename",
    "unstack_checkpoint",
]
__getattr__ = lazy_exports(__name__, _EXPORTS)
