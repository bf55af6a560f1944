"""ckpttool: read, scan, convert and check PyTorch checkpoints without running code from them.

```python
import ckpttool

checkpoint = ckpttool.read_checkpoint("model.pth")   # Checkpoint: nothing read beyond metadata
weights = ckpttool.find_weights(checkpoint.root)     # Weights: .root, .kind, .tensors
report = ckpttool.inspect_checkpoint("ckpt.pth.tar") # InspectReport: what `ckpttool inspect` shows
scan = ckpttool.scan_file("model.pth")               # FileScan: .verdict
entries = ckpttool.scan_paths(["a.pth", "models/"])  # list[ScanEntry], folders included
ckpttool.convert("model.pth", "model.safetensors")   # ConvertReport
ckpttool.diff("a.pth", "b.safetensors")              # DiffReport
ckpttool.check("model.pth")                          # CheckReport
ckpttool.remap("gpu.pth", "cpu.pth", device="cpu")   # RemapReport
ckpttool.optimizers("ckpt.pth.tar")                  # list[OptimizerReport]
state_dict = ckpttool.load_state_dict("model.pth")   # torch tensors built from their bytes
everything = ckpttool.load("ckpt.pth")               # the whole file as torch.load gives data
```

Every failure raises `CkptError`, naming the file and the problem. Names are imported on
first use, so `import ckpttool` loads neither torch nor any format reader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckpttool.lazy import lazy_exports

if TYPE_CHECKING:
    from ckpttool.api import check, check_paths, convert, diff, remap
    from ckpttool.checkpoint import Checkpoint
    from ckpttool.errors import CkptError
    from ckpttool.formats import read_checkpoint
    from ckpttool.materialize import load, load_state_dict
    from ckpttool.ops.compare import CheckOptions, CheckReport, DiffOptions, DiffReport, Tolerance
    from ckpttool.ops.convert import ConvertOptions, ConvertReport
    from ckpttool.ops.inspect import InspectReport, OptimizerReport, inspect_checkpoint, optimizers
    from ckpttool.ops.rewrite import RemapReport
    from ckpttool.ops.safety import FileScan, ScanEntry, UnreadableFile, scan_file, scan_paths
    from ckpttool.weights import Weights, find_weights

__version__ = "0.1.0"

_EXPORTS = {
    "read_checkpoint": "ckpttool.formats",
    "Checkpoint": "ckpttool.checkpoint",
    "find_weights": "ckpttool.weights",
    "Weights": "ckpttool.weights",
    "inspect_checkpoint": "ckpttool.ops.inspect",
    "InspectReport": "ckpttool.ops.inspect",
    "scan_file": "ckpttool.ops.safety",
    "scan_paths": "ckpttool.ops.safety",
    "FileScan": "ckpttool.ops.safety",
    "ScanEntry": "ckpttool.ops.safety",
    "UnreadableFile": "ckpttool.ops.safety",
    "convert": "ckpttool.api",
    "ConvertOptions": "ckpttool.ops.convert",
    "ConvertReport": "ckpttool.ops.convert",
    "diff": "ckpttool.api",
    "DiffOptions": "ckpttool.ops.compare",
    "DiffReport": "ckpttool.ops.compare",
    "Tolerance": "ckpttool.ops.compare",
    "check": "ckpttool.api",
    "check_paths": "ckpttool.api",
    "CheckOptions": "ckpttool.ops.compare",
    "CheckReport": "ckpttool.ops.compare",
    "remap": "ckpttool.api",
    "RemapReport": "ckpttool.ops.rewrite",
    "optimizers": "ckpttool.ops.inspect",
    "OptimizerReport": "ckpttool.ops.inspect",
    "load_state_dict": "ckpttool.materialize",
    "load": "ckpttool.materialize",
    "CkptError": "ckpttool.errors",
}
__all__ = [
    "CheckOptions",
    "CheckReport",
    "Checkpoint",
    "CkptError",
    "ConvertOptions",
    "ConvertReport",
    "DiffOptions",
    "DiffReport",
    "FileScan",
    "InspectReport",
    "OptimizerReport",
    "RemapReport",
    "ScanEntry",
    "Tolerance",
    "UnreadableFile",
    "Weights",
    "check",
    "check_paths",
    "convert",
    "diff",
    "find_weights",
    "inspect_checkpoint",
    "load",
    "load_state_dict",
    "optimizers",
    "read_checkpoint",
    "remap",
    "scan_file",
    "scan_paths",
]
__getattr__ = lazy_exports(__name__, _EXPORTS)
