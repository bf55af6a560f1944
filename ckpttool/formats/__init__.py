"""Checkpoint formats: one module per format, each declaring itself once (`format.Format`),
and one registry (`registry.FORMATS`) through which every path is detected, read and scanned.
"""

from __future__ import annotations

from ckpttool.formatnames import LEGACY, LEGACY_TAR, RAW_PICKLE, SAFETENSORS, TORCH_ZIP, TORCHSCRIPT, FormatName
from ckpttool.formats.registry import OpenedFile, detect, find_pickles, open_path, read_checkpoint

__all__ = [
    "LEGACY",
    "LEGACY_TAR",
    "RAW_PICKLE",
    "SAFETENSORS",
    "TORCHSCRIPT",
    "TORCH_ZIP",
    "FormatName",
    "OpenedFile",
    "detect",
    "find_pickles",
    "open_path",
    "read_checkpoint",
]
