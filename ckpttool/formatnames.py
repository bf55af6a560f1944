"""The names of the formats ckpttool reads and scans, spelt as every output spells them.

One `Literal`, so that a misspelt name is a type error, and a constant for each name the
code compares against. `"torch-zip"` is torch.save's zip; `"zip"` is a plain zip archive.
"""

from __future__ import annotations

from typing import Literal

FormatName = Literal[
    "torch-zip",
    "torchscript",
    "torch-legacy",
    "torch-legacy-tar",
    "safetensors",
    "sharded",
    "sharded-safetensors",
    "sharded-bin",
    "raw-pickle",
    "dcp",
    "dcp-data",  # one data file of a DCP checkpoint, named alone: only its folder reads
    "pt2",  # torch.export.save's archive
    "deepspeed",
    "hf-folder",  # named by its weights file's format once read
    # holding pickles, not checkpoints: only `scan` opens them
    "zip",
    "tar",
    "npy",
    "gzip",
    "bz2",
    "xz",
    "zlib",
    "lzma",
    "sealed",
]
# What `scan` calls a file of a folder that no format recognises and that holds no pickle.
NoPickleKind = Literal["text", "data"]
ScannedFormat = FormatName | NoPickleKind  # the `format` of a scanned file

TORCH_ZIP: FormatName = "torch-zip"
TORCHSCRIPT: FormatName = "torchscript"
LEGACY: FormatName = "torch-legacy"
LEGACY_TAR: FormatName = "torch-legacy-tar"
SAFETENSORS: FormatName = "safetensors"
RAW_PICKLE: FormatName = "raw-pickle"
PLAIN_ZIP: FormatName = "zip"
TAR: FormatName = "tar"
NPY: FormatName = "npy"
DCP: FormatName = "dcp"
DCP_DATA: FormatName = "dcp-data"
DEEPSPEED: FormatName = "deepspeed"
PT2: FormatName = "pt2"

# The file that makes a folder a DCP checkpoint (and says where each item of its data files is).
DCP_METADATA_FILE = ".metadata"
