"""A Hugging Face model folder with one weights file: what `save_pretrained` writes for a
model small enough not to be sharded (`model.safetensors`, or `pytorch_model.bin` from
older versions, with `config.json` beside it; diffusers names them
`diffusion_pytorch_model.*`, peft's adapters `adapter_model.*`).

The folder is one checkpoint: it is read and scanned as its weights file, under that
file's own format. safetensors is preferred when both are there, as transformers
prefers it. A sharded folder has an index and is `formats.sharded`'s.
"""

from __future__ import annotations

import os

from ckpttool.checkpoint import Checkpoint
from ckpttool.formatnames import FormatName
from ckpttool.formats.format import Format, Found, Probe

WEIGHTS_FILES = (
    "model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
    "adapter_model.safetensors", "adapter_model.bin",
)  # fmt: skip


def weights_file(folder: str) -> str | None:
    """The folder's single weights file, by the names transformers saves."""
    for name in WEIGHTS_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def _file(probe: Probe) -> str:
    path = weights_file(probe.path)
    assert path is not None  # recognised by it
    return path


def _read(probe: Probe) -> Checkpoint:
    inner = probe.member(_file(probe))
    return probe.registry.recognise(inner).open(inner)


def _pickles(probe: Probe) -> Found:
    inner = probe.member(_file(probe))
    return probe.registry.recognise(inner, scanning=True).scan(inner)


def _kind(probe: Probe) -> FormatName:
    inner = probe.member(_file(probe))
    return probe.registry.recognise(inner).kind_of(inner)


HF_FOLDER_FORMAT = Format(
    "hf-folder",
    lambda probe: probe.folder and weights_file(probe.path) is not None,
    pickles=_pickles,
    read=_read,
    kind=_kind,
)
