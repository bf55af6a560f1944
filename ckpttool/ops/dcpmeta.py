"""torch's own DCP `Metadata` object, built from `.metadata` without unpickling it.

`torch.distributed.checkpoint`'s `FileSystemReader.read_metadata` calls `pickle.load` on
the `.metadata` file, so a hostile file runs code before a single tensor is read. Here
the pickle is decoded by ckpttool's pickle machine into inert records, and the records
are turned into torch's metadata classes by a builder that knows exactly the classes
and callables DCP's writer emits; any other global makes the file unreadable. Nothing
named by the file is imported or called: each class comes from this allowlist, and the
few callables (torch.Size, the layout and memory-format decoders) are rebuilt here.

`SafeFileSystemReader` is DCP's own `FileSystemReader` with only `read_metadata`
replaced, so every other step of loading (planning, resharding, reading chunks) stays
torch's.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ckpttool.dtypes import DTYPES
from ckpttool.errors import FileAccessError, FormatError
from ckpttool.pickle.machine import decode
from ckpttool.pickle.objects import NEWOBJ, UNSET, Call, Global

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import Metadata

METADATA_FILE = ".metadata"
_DCP = "torch.distributed.checkpoint"


def is_dcp_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, METADATA_FILE))


def read_dcp_metadata(folder: str) -> Metadata:
    """The checkpoint's `Metadata`, with every storage entry checked against the data files."""
    path = os.path.join(folder, METADATA_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise FileAccessError(f"cannot read {METADATA_FILE}: {exc.strerror}", path=folder) from None
    decoded = decode(data, source=path)
    if decoded.problems:
        raise FormatError(f"{METADATA_FILE} is not DCP metadata: {decoded.problems[0]}", path=folder)
    from torch.distributed.checkpoint.metadata import Metadata

    metadata = _Builder(path).build(decoded.value)
    if not isinstance(metadata, Metadata):
        raise FormatError(f"{METADATA_FILE} holds no DCP Metadata object", path=folder)
    check_storage(folder, metadata)
    return metadata


def check_storage(folder: str, metadata: Metadata) -> None:
    """Every chunk lies inside a data file that exists: a missing `.distcp` file or a
    truncated one is named before DCP opens anything."""
    sizes: dict[str, int] = {}
    for index, info in (metadata.storage_data or {}).items():
        name = info.relative_path
        if name not in sizes:
            if os.path.basename(name) != name or not name:
                raise FormatError(f"{METADATA_FILE} names a data file outside the folder: {name!r}", path=folder)
            try:
                sizes[name] = os.path.getsize(os.path.join(folder, name))
            except OSError:
                raise FormatError(f"data file {name} is missing (needed for {index.fqn!r})", path=folder) from None
        if info.offset < 0 or info.length < 0 or info.offset + info.length > sizes[name]:
            raise FormatError(
                f"data file {name} is truncated: {index.fqn!r} needs bytes {info.offset}..{info.offset + info.length}"
                f" of {sizes[name]}",
                path=folder,
            )


class _Builder:
    """Inert pickle records -> torch's DCP metadata objects, allowlisted class by class."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.memo: dict[int, Any] = {}
        import torch
        from torch.distributed.checkpoint import filesystem, metadata

        self.torch = torch
        self.classes: dict[str, type] = {
            f"{_DCP}.metadata.{name}": getattr(metadata, name)
            for name in (
                "Metadata",
                "TensorStorageMetadata",
                "TensorProperties",
                "ChunkStorageMetadata",
                "BytesStorageMetadata",
                "MetadataIndex",
                "StorageMeta",
            )
        }
        self.classes[f"{_DCP}.filesystem._StorageInfo"] = filesystem._StorageInfo
        self.calls: dict[str, Callable[..., Any]] = {
            "torch.Size": lambda *a: torch.Size(self._ints(a[0]) if a else ()),
            "torch.serialization._get_layout": self._layout,
            f"{_DCP}.metadata._MEM_FORMAT_ENCODING": lambda v: metadata._MEM_FORMAT_ENCODING(self._int(v)),
            "pathlib.PosixPath": lambda *parts: str(pathlib.PurePosixPath(*(self._str(p) for p in parts))),
            "pathlib.WindowsPath": lambda *parts: str(pathlib.PureWindowsPath(*(self._str(p) for p in parts))),
            "collections.OrderedDict": lambda *a: dict(a[0]) if a else {},
        }

    def build(self, node: Any) -> Any:
        key = id(node)
        if key in self.memo:
            return self.memo[key]
        value = self._build(node)
        self.memo[key] = value
        return value

    def _build(self, node: Any) -> Any:
        if isinstance(node, Global):
            return self._global(node)
        if isinstance(node, Call):
            return self._call(node)
        if isinstance(node, list):
            return [self.build(v) for v in node]
        if isinstance(node, tuple):
            return tuple(self.build(v) for v in node)
        if isinstance(node, dict):
            return {self.build(k): self.build(v) for k, v in node.items()}
        if node is None or isinstance(node, str | int | float | bool | bytes):
            return node
        raise self._refuse(type(node).__name__)

    def _global(self, node: Global) -> Any:
        if node.module == "torch" and node.name in DTYPES:
            return getattr(self.torch, node.name)
        raise self._refuse(node.qualname)

    def _call(self, node: Call) -> Any:
        name = node.func_name or "?"
        if node.kind == NEWOBJ and name in self.classes:
            cls = self.classes[name]
            obj: Any = object.__new__(cls)
            if node.state is not UNSET:
                self._set_state(obj, self.build(node.state))
            return obj
        if name in self.calls and node.kwargs is None and node.state is UNSET:
            value = self.calls[name](*self.build(node.args))
            if node.dictitems and isinstance(value, dict):
                value.update((self.build(k), self.build(v)) for k, v in node.dictitems)
            return value
        raise self._refuse(name)

    def _set_state(self, obj: Any, state: Any) -> None:
        if hasattr(type(obj), "__setstate__") and isinstance(state, tuple) and len(state) == 5:
            obj.__setstate__(state)  # TensorProperties: torch's own decoder of plain values
            return
        if isinstance(state, tuple) and len(state) == 2 and state[0] is None:
            state = state[1]  # (None, slots) form
        if not isinstance(state, dict):
            raise self._refuse(f"state of {type(obj).__name__}")
        fields = getattr(type(obj), "__dataclass_fields__", {})
        for name, value in state.items():
            if name not in fields:
                raise self._refuse(f"{type(obj).__name__}.{name}")
            object.__setattr__(obj, name, value)  # MetadataIndex is frozen
        for name, spec in fields.items():  # fields the writer leaves out when None
            if name not in state and not hasattr(obj, name):
                factory = spec.default_factory
                object.__setattr__(obj, name, None if factory is dataclasses.MISSING else factory())

    def _layout(self, name: Any) -> Any:
        text = self._str(name)
        if text not in ("torch.strided", "torch.sparse_coo", "torch.sparse_csr"):
            raise self._refuse(f"layout {text}")
        return getattr(self.torch, text.removeprefix("torch."))

    def _ints(self, value: Any) -> tuple[int, ...]:
        if not isinstance(value, tuple | list) or not all(isinstance(v, int) for v in value):
            raise self._refuse("torch.Size of non-integers")
        return tuple(value)

    def _int(self, value: Any) -> int:
        if not isinstance(value, int):
            raise self._refuse("non-integer memory format")
        return value

    def _str(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._refuse("non-string path")
        return value

    def _refuse(self, what: str) -> FormatError:
        return FormatError(f"{METADATA_FILE} is not DCP metadata ckpttool can read: unexpected {what}", path=self.path)


def safe_reader(folder: str, metadata: Metadata | None = None) -> Any:
    """DCP's `FileSystemReader` whose metadata comes from `read_dcp_metadata` (or is given,
    read that way already)."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    known = metadata if metadata is not None else read_dcp_metadata(folder)

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
            if kwargs.get("rank") is not None:
                raise FileNotFoundError("per-rank metadata")  # only the global .metadata is read
            if known.storage_meta is None:
                known.storage_meta = StorageMeta()
            known.storage_meta.load_id = self.load_id
            return known

    return SafeFileSystemReader(folder)
