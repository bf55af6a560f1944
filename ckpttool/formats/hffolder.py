"""A Hugging Face model folder: what `save_pretrained` writes (`model.safetensors`, or
`pytorch_model.bin` from older versions, with `config.json` beside it, or either sharded
with an index; diffusers names them `diffusion_pytorch_model.*`, peft's adapters
`adapter_model.*`; a `variant` goes before the extension, `model.fp16.safetensors`,
`model.safetensors.index.fp16.json`).

The folder is one checkpoint: the file `from_pretrained` would load, read and scanned
under that file's own format. Its order is transformers': the safetensors file, its
index, the .bin file, its index; a variant only when no file without one is there
(Hub repositories keep `diffusion_pytorch_model.safetensors` beside its `.fp16` copy,
and `model.safetensors.index.json` beside `pytorch_model.bin.index.json`). A chosen
index is `formats.sharded`'s.
"""

from __future__ import annotations

import os
import re

from ckpttool.checkpoint import Checkpoint
from ckpttool.errors import FormatError
from ckpttool.formatnames import FormatName
from ckpttool.formats.format import Format, Found, Probe

# Each library's stems of (its safetensors file, its .bin file): transformers, diffusers, peft.
LIBRARY_STEMS = (
    ("model", "pytorch_model"), ("diffusion_pytorch_model", "diffusion_pytorch_model"),
    ("adapter_model", "adapter_model"),
)  # fmt: skip
WEIGHTS_FILES = tuple(f"{name}.{ext}" for st, pt in LIBRARY_STEMS for name, ext in ((st, "safetensors"), (pt, "bin")))
_VARIANT = re.compile(r"[A-Za-z0-9_]+")  # fp16, bf16, ema, non_ema: no dots, no dashes (shards have them)


def _names(variant: str | None) -> list[str]:
    """The files `from_pretrained` looks for, in its order, for one variant (or none)."""
    names = []
    for st, pt in LIBRARY_STEMS:
        for stem, ext in ((st, "safetensors"), (pt, "bin")):
            names.append(f"{stem}.{variant}.{ext}" if variant else f"{stem}.{ext}")
            names.append(f"{stem}.{ext}.index.{variant}.json" if variant else f"{stem}.{ext}.index.json")
    return names


def _variant_of(name: str) -> str | None:
    for st, pt in LIBRARY_STEMS:
        for stem, ext in ((st, "safetensors"), (pt, "bin")):
            for head, tail in ((f"{stem}.", f".{ext}"), (f"{stem}.{ext}.index.", ".json")):
                if name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail):
                    middle = name[len(head) : len(name) - len(tail)]
                    if _VARIANT.fullmatch(middle):
                        return middle
    return None


def library_weights(folder: str) -> str | None:
    """The weights file or index of `folder` that transformers, diffusers or peft would load;
    None when the folder holds none of their names. Variants of several kinds and none
    without a variant: which to read is the user's to say."""
    files = {n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))}
    for name in _names(None):
        if name in files:
            return os.path.join(folder, name)
    variants = sorted({v for v in map(_variant_of, files) if v is not None})
    if len(variants) > 1:
        raise FormatError(f"weights in several variants ({', '.join(variants)}): name the file to read", path=folder)
    for name in _names(variants[0]) if variants else []:
        if name in files:
            return os.path.join(folder, name)
    return None


def weights_file(folder: str) -> str | None:
    """The folder's single weights file, when that is what the libraries load (not an index)."""
    chosen = library_weights(folder)
    return chosen if chosen is not None and not chosen.endswith(".json") else None


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
