"""What torch says about each tensor of a fixture, in the terms ckpttool reports.

ckpttool describes a tensor by dtype, shape, stride, storage offset, the storage it
views and the location that storage is restored to. Torch shows the same facts once
it has loaded the file (trusted, in the test process only). The helpers here reduce
both sides to `Layout` values and storage groups so tests can compare them directly.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckpttool.checkpoint import Checkpoint, TensorRef
from ckpttool.formats import read_checkpoint
from ckpttool.weights import NamedTensor
from support import groundtruth as gt

# Module attributes that hold parameters, buffers and children; ckpttool addresses
# their contents by state_dict names, so the walk below does too.
MODULE_TABLES = ("_parameters", "_buffers", "_modules")


@dataclass(frozen=True)
class Layout:
    """The facts of one tensor that both torch and ckpttool can state."""

    dtype: str
    shape: tuple[int, ...]
    layout: str
    stride: tuple[int, ...] | None  # None for sparse layouts, which have no strides
    offset: int | None
    device: str


@dataclass
class TorchFile:
    """A fixture as torch loaded it, with the location each storage was saved with."""

    obj: Any
    locations_by_pointer: dict[int, str]
    file_locations: frozenset[str]

    def location_of(self, tensor: torch.Tensor) -> str:
        storage = primary_storage(tensor)
        if storage.nbytes():
            found = self.locations_by_pointer.get(storage.data_ptr())
            if found is not None:
                return found
        # An empty storage has no address to look up; a file with one location
        # still says where it was.
        if len(self.file_locations) == 1:
            return next(iter(self.file_locations))
        raise AssertionError(f"cannot tell the saved location of a {tensor.dtype} tensor")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def layout_name(layout: torch.layout) -> str:
    return str(layout).removeprefix("torch.")


def primary_storage(tensor: torch.Tensor) -> torch.UntypedStorage:
    """The storage holding a tensor's data (a sparse tensor's values)."""
    if tensor.layout == torch.sparse_coo:
        return tensor._values().untyped_storage()
    if tensor.layout != torch.strided:
        return tensor.values().untyped_storage()
    return tensor.untyped_storage()


@cache
def load_torch_file(path: Path) -> TorchFile:
    """torch.load(path, map_location=...) that records each storage's saved location.

    The storages stay on the CPU; a storage's address identifies it afterwards.
    """
    by_pointer: dict[int, str] = {}
    every: set[str] = set()

    def record_location(storage: Any, location: str) -> Any:
        every.add(location)
        if storage.nbytes():
            by_pointer[storage.data_ptr()] = location
        return storage

    obj = gt.torch_load_trusted(path, map_location=record_location)
    return TorchFile(obj, by_pointer, frozenset(every))


@cache
def ckpt(path: Path) -> Checkpoint:
    """ckpttool's reading of a fixture, once per test session (reading is side-effect free)."""
    return read_checkpoint(str(path))


def torch_layout(tensor: torch.Tensor, device: str) -> Layout:
    strided = tensor.layout == torch.strided
    return Layout(
        dtype=dtype_name(tensor.dtype),
        shape=tuple(tensor.shape),
        layout=layout_name(tensor.layout),
        stride=tuple(tensor.stride()) if strided else None,
        offset=int(tensor.storage_offset()) if strided else None,
        device=device,
    )


def ref_layout(ref: TensorRef) -> Layout:
    strided = ref.layout == "strided"
    return Layout(
        dtype=ref.dtype,
        shape=tuple(ref.shape),
        layout=ref.layout,
        stride=tuple(ref.stride) if strided else None,
        offset=ref.offset if strided else None,
        device=ref.device,
    )


def join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def tensors_in(obj: Any) -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a loaded object with its dotted path, each container once.

    Mappings give their keys, lists and tuples their positions, modules their
    parameters, buffers and children by name and then their other attributes,
    other objects their ``__dict__``. A tensor reachable under two names is listed
    under both (tied weights), as a state_dict lists it.
    """
    found: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, torch.Tensor):
            found.append((path, node))
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        children = [(join(path, key), value) for key, value in _children(node)]
        stack.extend(reversed(children))
    return found


def _children(node: Any) -> list[tuple[Any, Any]]:
    if isinstance(node, Mapping):
        return list(node.items())
    if isinstance(node, (list, tuple)):
        return list(enumerate(node))
    if isinstance(node, nn.Module):
        tables = [item for table in MODULE_TABLES for item in getattr(node, table).items()]
        others = [(k, v) for k, v in vars(node).items() if k not in MODULE_TABLES]
        return tables + others
    if isinstance(node, argparse.Namespace):
        return list(vars(node).items())
    return []


def torch_storage_groups(named: list[tuple[str, torch.Tensor]]) -> list[list[str]]:
    """Keys grouped by the storage their data lives in (empty storages left out)."""
    groups: dict[int, list[str]] = {}
    for key, tensor in named:
        storage = primary_storage(tensor)
        if tensor.layout == torch.strided and storage.nbytes():
            groups.setdefault(storage.data_ptr(), []).append(key)
    return sorted(sorted(keys) for keys in groups.values())


def ref_storage_groups(named: list[NamedTensor]) -> list[list[str]]:
    """Keys grouped by the `Storage` object ckpttool gives their tensors."""
    groups: dict[int, list[str]] = {}
    for item in named:
        storage = item.tensor.storage
        if item.tensor.layout == "strided" and storage is not None and storage.nbytes:
            groups.setdefault(id(storage), []).append(item.key)
    return sorted(sorted(keys) for keys in groups.values())
