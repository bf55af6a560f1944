"""What every conversion writes the same way, whatever its source (a file, or a DCP folder):
the safetensors metadata and header check, a `.pth` state_dict, the Hugging Face index, and
the refusal of a dtype safetensors cannot store."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

from ckpttool.atomic import OutputSet
from ckpttool.checkpoint import contiguous_strides
from ckpttool.dtypes import DTYPES
from ckpttool.errors import FormatError, VerificationError
from ckpttool.formats.torchzip_write import (
    PlannedTensor,
    StorageRecord,
    state_dict_graph,
    storage_numel,
    write_torch_zip,
)
from ckpttool.ops.convert.targets import SAFETENSORS, ConvertTarget
from ckpttool.pickle.writer import dumps

# (name, dtype, shape) of a tensor as written
Planned = tuple[str, str, Sequence[int]]


def refuse_unstorable(name: str, dtype: str, to: ConvertTarget) -> None:
    """A dtype the target cannot hold is refused before anything is written."""
    if to == SAFETENSORS and DTYPES[dtype].safetensors is None:
        raise FormatError(f"tensor {name!r} has dtype {dtype}, which safetensors cannot store; use --to pth")


def safetensors_metadata(user: dict[str, str], aliases: dict[str, str] | None = None) -> dict[str, str]:
    """A safetensors file's metadata: format=pt (transformers refuses files without it), the
    user's `--metadata`, and the tied names the file keeps once (`--dedupe`)."""
    metadata = {"format": "pt", **user}
    if aliases:
        metadata["ckpttool.aliases"] = json.dumps(aliases, sort_keys=True)
    return metadata


def check_safetensors_header(path: str, planned: Iterable[Planned], metadata: dict[str, str]) -> None:
    """The safetensors library itself parses the header written, with the planned names,
    dtypes, shapes and metadata."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        found = {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()}
        written = f.metadata() or {}
    if found != {name: (DTYPES[dtype].safetensors, list(shape)) for name, dtype, shape in planned} or (
        written != metadata
    ):
        raise VerificationError("header does not read back as planned")


def pth_tensor(name: str, dtype: str, shape: tuple[int, ...], storage_key: str, numel: int) -> PlannedTensor:
    """A contiguous tensor of the `.pth` state_dict, the whole of its own storage."""
    return PlannedTensor(name, dtype, shape, contiguous_strides(shape), 0, storage_key, storage_numel(dtype, numel))


def write_pth(f: BinaryIO, root: str, tensors: Sequence[PlannedTensor], records: Iterator[StorageRecord]) -> None:
    """A `.pth` torch.load(weights_only=True) reads: the state_dict's pickle, then each storage
    record as `records` yields it (one in memory at a time)."""
    write_torch_zip(f, root, dumps(state_dict_graph(tensors)), records)


def write_index(outs: OutputSet, path: str, weight_map: dict[str, str], total_size: int) -> None:
    """The Hugging Face index of sharded safetensors: every tensor's shard, and the total size."""
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    output = outs.open(path)
    output.handle.write(json.dumps(index, indent=2).encode() + b"\n")
    output.seal()
    with open(output.temp, encoding="utf-8") as f:
        if json.load(f) != index:
            raise VerificationError(f"{path} does not read back as written")


def shard_of(paths: Sequence[str], names: Sequence[Iterable[str]]) -> dict[str, str]:
    """The index's weight_map: each name to the file name of its shard."""
    return {name: os.path.basename(path) for path, shard in zip(paths, names, strict=True) for name in shard}
