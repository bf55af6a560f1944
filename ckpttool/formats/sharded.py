"""Sharded checkpoints: an `*.index.json` whose `weight_map` names each tensor's shard.

This is the Hugging Face layout (`model.safetensors.index.json`,
`pytorch_model.bin.index.json`). Every shard is read with its own reader; the
tensors are listed shard by shard in file order, and each must be in the shard the
index names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from ckpttool.checkpoint import Checkpoint, Storage, TensorRef
from ckpttool.errors import FormatError
from ckpttool.formatnames import LEGACY, SAFETENSORS, TORCH_ZIP, TORCHSCRIPT, FormatName
from ckpttool.formats.format import Format, Found, Probe
from ckpttool.formats.hffolder import library_weights
from ckpttool.weights import find_weights

MAX_INDEX_SIZE = 100_000_000
ShardReader = Callable[[str], Checkpoint]


def find_index(folder: str) -> str | None:
    """The index the libraries would load (see `hffolder`), else the folder's one `*.index.json`."""
    chosen = library_weights(folder)
    if chosen is not None:
        return chosen if chosen.endswith(".json") else None
    names = sorted(n for n in os.listdir(folder) if n.endswith(".index.json"))
    if len(names) > 1:
        raise FormatError(f"several index files ({', '.join(names)}); pass one of them", path=folder)
    return os.path.join(folder, names[0]) if names else None


def load_index(path: str) -> dict[str, Any]:
    if os.path.getsize(path) > MAX_INDEX_SIZE:
        raise FormatError("index file larger than 100 MB", path=path)
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FormatError(f"index is not valid JSON: {exc}", path=path) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise FormatError("index has no weight_map of tensor names to shard files", path=path)
    checked: dict[str, Any] = index
    return checked


def read_sharded(index_path: str, read_shard: ShardReader, index: dict[str, Any] | None = None) -> Checkpoint:
    """Every shard through `read_shard`; `index` is the loaded index when the caller has it."""
    index = index if index is not None else load_index(index_path)
    weight_map: dict[str, str] = index["weight_map"]
    folder = os.path.dirname(os.path.abspath(index_path))
    # Numbered shard files hold the state_dict in order; weight_map is usually sorted by name.
    shards = sorted(set(weight_map.values()))
    tensors: dict[str, TensorRef] = {}
    storages: dict[str, Storage] = {}
    anomalies: list[str] = []
    files = [index_path]
    total = os.path.getsize(index_path)
    is_safetensors: set[bool] = set()  # per shard
    for shard in shards:
        path = shard_path(folder, shard, index_path)
        checkpoint = read_shard(path)
        is_safetensors.add(checkpoint.format == SAFETENSORS)
        files.append(path)
        total += checkpoint.file_size
        found = find_weights(checkpoint.root).mapping()
        expected = [name for name, s in weight_map.items() if s == shard]
        missing = [name for name in expected if name not in found]
        if missing:
            raise FormatError(
                f"{len(missing)} tensors mapped to {shard} are not in it, e.g. {missing[0]!r}", path=index_path
            )
        extra = [name for name in found if weight_map.get(name) != shard]
        if extra:
            anomalies.append(f"{shard} holds {len(extra)} tensors the index does not map to it, e.g. {extra[0]!r}")
        tensors.update((name, t) for name, t in found.items() if weight_map.get(name) == shard)
        storages.update((f"{shard}/{key}", s) for key, s in checkpoint.storages.items())
        anomalies.extend(f"{shard}: {a}" for a in checkpoint.anomalies)
    metadata = (
        {k: str(v) for k, v in (index.get("metadata") or {}).items()} if isinstance(index.get("metadata"), dict) else {}
    )
    fmt: FormatName = "sharded"  # shards of both kinds
    if is_safetensors == {True}:
        fmt = "sharded-safetensors"
    elif is_safetensors == {False}:
        fmt = "sharded-bin"
    return Checkpoint(index_path, fmt, total, tensors, storages, "little", metadata, anomalies, files)


def sharded_format(index: dict[str, Any]) -> FormatName:
    """sharded-safetensors or sharded-bin, from the shard files' names."""
    shards = set(index["weight_map"].values())
    if shards and all(s.endswith(".safetensors") for s in shards):
        return "sharded-safetensors"
    return "sharded-bin" if shards else "sharded"


def shard_path(folder: str, shard: str, index_path: str) -> str:
    if os.path.isabs(shard) or ".." in shard.replace("\\", "/").split("/"):
        raise FormatError(f"shard name {shard!r} points outside the index's folder", path=index_path)
    path = os.path.join(folder, shard)
    if not os.path.isfile(path):
        raise FormatError(f"shard {shard} named in the index does not exist", path=index_path)
    return path


# -- the format ------------------------------------------------------------------------------

_SHARDS: frozenset[FormatName] = frozenset({TORCH_ZIP, TORCHSCRIPT, SAFETENSORS, LEGACY})


def _recognise(probe: Probe) -> bool:
    if probe.folder:
        return find_index(probe.path) is not None
    if probe.head.lstrip()[:1] != b"{":
        return False
    try:
        probe.memo["index"] = load_index(probe.path)  # read once: reading and scanning use it
    except (FormatError, OSError):
        return False
    return True


def _index(probe: Probe) -> tuple[str, dict[str, Any]]:
    """The index file and its content; a folder's is found and loaded once."""
    if "index" not in probe.memo:
        path = (find_index(probe.path) if probe.folder else probe.path) or probe.path
        probe.memo["index_path"], probe.memo["index"] = path, load_index(path)
    return probe.memo.get("index_path", probe.path), probe.memo["index"]


def _reader(parent: Probe) -> ShardReader:
    def read_shard(path: str) -> Checkpoint:
        shard = parent.member(path)
        fmt = parent.registry.recognise(shard)
        if fmt.name not in _SHARDS:
            raise FormatError(f"shard is {fmt.name}, expected safetensors or a torch checkpoint", path=path)
        return fmt.open(shard)

    return read_shard


def _read(probe: Probe) -> Checkpoint:
    index_path, index = _index(probe)
    return read_sharded(index_path, _reader(probe), index)


def sharded_pickles(probe: Probe) -> Found:
    """Every shard's pickles, named `shard:pickle`; a shard that cannot be scanned is a problem."""
    index_path, index = _index(probe)
    folder = os.path.dirname(os.path.abspath(index_path))
    found = Found()
    for shard in dict.fromkeys(index["weight_map"].values()):
        found.add_member(probe, shard_path(folder, shard, index_path), shard, container=SHARDED_FORMAT.name)
    return found


SHARDED_FORMAT = Format(
    "sharded",
    _recognise,
    pickles=sharded_pickles,
    read=_read,
    kind=lambda probe: sharded_format(_index(probe)[1]),
)
