"""Checkpoint formats: one module per format, each declaring itself once (`format.Format`),
and one registry (`registry.FORMATS`) through which every path is detected, read and scanned.
"""

from __future__ import annotations

from ckpttool.formats.format import FormatName
from ckpttool.formats.legacy import LEGACY, LEGACY_TAR
from ckpttool.formats.rawpickle import RAW_PICKLE
from ckpttool.formats.registry import OpenedFile, detect, find_pickles, open_path, read_checkpoint
from ckpttool.formats.safetensors import SAFETENSORS
from ckpttool.formats.torchzip import TORCH_ZIP as ZIP
from ckpttool.formats.torchzip import TORCHSCRIPT

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
