"""Checkpoint formats: one module per format, each declaring itself once (`format.Format`),
and one registry (`registry.FORMATS`) through which every path is detected, read and scanned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckpttool.formats.format import FormatName
from ckpttool.formats.registry import OpenedFile, detect, find_pickles, open_path, read_checkpoint

if TYPE_CHECKING:
    from ckpttool.formats.legacy import LEGACY, LEGACY_TAR
    from ckpttool.formats.rawpickle import RAW_PICKLE
    from ckpttool.formats.safetensors import SAFETENSORS
    from ckpttool.formats.torchzip import TORCH_ZIP as ZIP
    from ckpttool.formats.torchzip import TORCHSCRIPT

# Format names, from the reader modules that declare them, imported when first asked for:
# importing this package imports no reader.
_NAMES = {
    "LEGACY": ("ckpttool.formats.legacy", "LEGACY"),
    "LEGACY_TAR": ("ckpttool.formats.legacy", "LEGACY_TAR"),
    "RAW_PICKLE": ("ckpttool.formats.rawpickle", "RAW_PICKLE"),
    "SAFETENSORS": ("ckpttool.formats.safetensors", "SAFETENSORS"),
    "ZIP": ("ckpttool.formats.torchzip", "TORCH_ZIP"),
    "TORCHSCRIPT": ("ckpttool.formats.torchzip", "TORCHSCRIPT"),
}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    module, attribute = _NAMES[name]
    return getattr(import_module(module), attribute)


__all__ = [
    "LEGACY",
    "LEGACY_TAR",
    "RAW_PICKLE",
    "SAFETENSORS",
    "TORCHSCRIPT",
    "ZIP",
    "FormatName",
    "OpenedFile",
    "detect",
    "find_pickles",
    "open_path",
    "read_checkpoint",
]
