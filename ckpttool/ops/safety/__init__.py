"""Whether a file is safe to load: the scan verdict, folders and path lists, allowlists, the --trust path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckpttool.lazy import lazy_exports

if TYPE_CHECKING:
    from ckpttool.ops.safety.allowconfig import allowed_names
    from ckpttool.ops.safety.paths import ScanEntry, UnreadableFile, scan_folder, scan_paths
    from ckpttool.ops.safety.scan import (
        DANGEROUS,
        NEEDS_ALLOWLIST,
        SAFE,
        UNKNOWN_CALL,
        Danger,
        FileScan,
        danger,
        scan_file,
        scan_opened,
    )
    from ckpttool.ops.safety.trust import torch_accepts, trusted_load, trusted_weights

_EXPORTS = {
    "DANGEROUS": ".scan",
    "NEEDS_ALLOWLIST": ".scan",
    "SAFE": ".scan",
    "UNKNOWN_CALL": ".scan",
    "Danger": ".scan",
    "FileScan": ".scan",
    "danger": ".scan",
    "scan_file": ".scan",
    "scan_opened": ".scan",
    "ScanEntry": ".paths",
    "UnreadableFile": ".paths",
    "scan_folder": ".paths",
    "scan_paths": ".paths",
    "allowed_names": ".allowconfig",
    "torch_accepts": ".trust",
    "trusted_load": ".trust",
    "trusted_weights": ".trust",
}
__all__ = [
    "DANGEROUS",
    "Danger",
    "FileScan",
    "NEEDS_ALLOWLIST",
    "SAFE",
    "ScanEntry",
    "UNKNOWN_CALL",
    "UnreadableFile",
    "allowed_names",
    "danger",
    "scan_file",
    "scan_folder",
    "scan_opened",
    "scan_paths",
    "torch_accepts",
    "trusted_load",
    "trusted_weights",
]
__getattr__ = lazy_exports(__name__, _EXPORTS)
