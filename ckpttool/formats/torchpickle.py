"""Reading torch's `data.pkl`-style pickles: persistent ids become `Storage`s.

torch writes each storage as a persistent id
`('storage', <storage class>, key, location, numel)` (zip format) or with a sixth
`view_metadata` item (legacy format). This module validates those tuples and hands
out one `Storage` per key, so every tensor viewing a storage shares it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ckpttool.checkpoint import GlobalName, Storage, TensorRef, validate_layout
from ckpttool.dtypes import storage_dtype
from ckpttool.errors import FormatError
from ckpttool.interpret import Interpreter
from ckpttool.pickle import Decoded, Global
from ckpttool.weights import walk


@dataclass
class StorageTable:
    """The storages of one pickle, by key; records are attached by the format reader."""

    path: str
    byteorder: str = "little"
    legacy: bool = False  # legacy ids may carry view metadata, and name module classes
    storages: dict[str, Storage] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)

    def resolve(self, pid: Any) -> Storage | GlobalName:
        # torch.save's own ids, by the 10^5: checked in one step before the general path
        if not self.legacy and type(pid) is tuple and len(pid) == 5 and pid[0] == "storage":
            _, storage_type, key, location, numel = pid
            dtype = _dtype_of(storage_type)
            if dtype is not None and type(key) is str and type(location) is str and type(numel) is int and numel >= 0:
                return self._storage(key, dtype, numel, location)
        return self._resolve_any(pid)

    def _resolve_any(self, pid: Any) -> Storage | GlobalName:
        if self.legacy and isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            # legacy whole models: ('module', cls, source_file, source) stands for the class
            return GlobalName(pid[1].qualname) if isinstance(pid[1], (Global, GlobalName)) else GlobalName("?")
        expected = (5, 6) if self.legacy else (5,)
        if not (isinstance(pid, tuple) and len(pid) in expected and pid[0] == "storage"):
            raise FormatError(f"persistent id {_short(pid)} is not a storage reference", path=self.path)
        storage_type, key, location, numel = pid[1:5]
        dtype = _dtype_of(storage_type)
        if dtype is None:
            raise FormatError(f"storage {key!r} has unknown storage type {_short(storage_type)}", path=self.path)
        if not isinstance(key, (str, int)) or not isinstance(location, str):
            raise FormatError(f"storage reference {_short(pid)} has a malformed key or location", path=self.path)
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise FormatError(f"storage {key!r} declares {numel!r} elements", path=self.path)
        if len(pid) == 6 and pid[5] is not None:
            raise FormatError(f"storage {key!r} is a legacy storage view, which is not supported", path=self.path)
        return self._storage(str(key), dtype, numel, location)

    def _storage(self, key: str, dtype: str, numel: int, location: str) -> Storage:
        existing = self.storages.get(key)
        if existing is None:
            existing = Storage(key, dtype, numel, location, byteorder=self.byteorder)
            self.storages[key] = existing
        elif (existing.dtype, existing.numel) != (dtype, numel):
            # torch keeps the first declaration of a key; so do we, and say so.
            self.anomalies.append(
                f"storage {key!r} declared as {existing.numel} {existing.dtype} and as {numel} {dtype}"
            )
        return existing


def _dtype_of(storage_type: Any) -> str | None:
    if not isinstance(storage_type, (Global, GlobalName)):
        return None
    return _storage_dtype(storage_type.qualname)


@lru_cache(maxsize=256)  # storage classes: a handful per file
def _storage_dtype(qualname: str) -> str | None:
    module, _, name = qualname.rpartition(".")
    return storage_dtype(module, name)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def interpret_torch_pickle(decoded: Decoded, table: StorageTable) -> Any:
    """What the reduce hooks left: instances, unknown calls, globals used as values."""
    return Interpreter(table.resolve, table.path).value(decoded.value)


def check_tensors(root: Any, path: str) -> None:
    """Every tensor's view must fit its storage: checked before anything reads bytes."""
    for key, node in walk(root):
        if isinstance(node, TensorRef):
            validate_layout(node, path, key)
            for part in (node.extra or {}).get("parts", ()):
                if isinstance(part, TensorRef):
                    validate_layout(part, path, key)
