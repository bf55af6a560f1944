"""Checkpoint formats: one module per format, each declaring itself once (`format.Format`),
and one registry (`registry.FORMATS`) through which every path is detected, read and scanned.
"""

from __future__ import annotations

from ckpttool.formats.format import FormatName
from ckpttool.formats.registry import detect, find_pickles, read_checkpoint

ZIP: FormatName = "torch-zip"
TORCHSCRIPT: FormatName = "torchscript"
LEGACY: FormatName = "torch-legacy"
LEGACY_TAR: FormatName = "torch-legacy-tar"
SAFETENSORS: FormatName = "safetensors"
RAW_PICKLE: FormatName = "raw-pickle"

__all__ = [
    "LEGACY",
    "LEGACY_TAR",
    "RAW_PICKLE",
    "SAFETENSORS",
    "TORCHSCRIPT",
    "ZIP",
    "FormatName",
    "detect",
    "find_pickles",
    "read_checkpoint",
]
