"""Writing torch zip checkpoints: a pickle, its storage records, and torch's small records.

Used by `convert --to pth` (a plain state_dict) and `remap` (the source's own pickle,
rewritten). The layout is what `torch.save` writes, so `torch.load` — with
`weights_only=True` and `mmap=True` — reads the result.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from ckpttool.dtypes import DTYPES, STORAGE_DTYPES
from ckpttool.formats.zipwriter import ZipWriter
from ckpttool.pickle.objects import Call, Global, PersistentRef
from ckpttool.tensordata import ByteRange

FILE_FORMAT_VERSION = b"3\n"
_TYPED_STORAGES = {dtype: name for name, dtype in STORAGE_DTYPES.items() if name != "UntypedStorage"}


@dataclass
class StorageRecord:
    """One `data/<key>` record: bytes in memory, or a range of another file."""

    key: str
    data: bytes | memoryview | None = None
    span: ByteRange | None = None
    crc: int | None = None  # known CRC-32 of `span`, when copied whole from a zip record


def root_folder(path: str) -> str:
    """torch names the archive's folder after the file's stem."""
    stem = os.path.basename(path).split(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "archive"


def write_torch_zip(
    out: BinaryIO,
    root: str,
    pickle_bytes: bytes,
    records: Iterable[StorageRecord],  # written as they come: a generator may load each in turn
    byteorder: str = "little",
    progress: Callable[[int], None] | None = None,
) -> None:
    """`progress`, when given, is told the size of each storage record once it is written."""
    zw = ZipWriter(out, root)
    zw.write_bytes("data.pkl", pickle_bytes)
    zw.write_bytes(".format_version", b"1")
    zw.write_bytes(".storage_alignment", b"64")
    zw.write_bytes("byteorder", byteorder.encode())
    for record in records:
        name = f"data/{record.key}"
        if record.span is not None:
            zw.write_range(name, record.span, record.crc)
        else:
            zw.write_bytes(name, record.data if record.data is not None else b"")
        if progress is not None:
            progress(record.span.size if record.span is not None else len(record.data or b""))
    zw.write_bytes("version", FILE_FORMAT_VERSION)
    zw.write_bytes(".data/serialization_id", _serialization_id(pickle_bytes))
    zw.close()


def _serialization_id(pickle_bytes: bytes) -> bytes:
    # torch writes a random 40-digit id; a digest of the pickle keeps output reproducible.
    return str(int(hashlib.sha256(pickle_bytes).hexdigest(), 16))[:40].encode()


# -- a plain state_dict as torch pickles it -------------------------------------------------------


@dataclass
class PlannedTensor:
    """A tensor of the output state_dict, viewing (part of) storage `storage_key`."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    storage_key: str
    storage_numel: int


def storage_class(dtype: str) -> Global:
    """The storage class torch pickles for a dtype: typed where one exists, else untyped."""
    name = _TYPED_STORAGES.get(dtype)
    return Global("torch", name) if name else Global("torch.storage", "UntypedStorage")


def storage_numel(dtype: str, numel: int) -> int:
    """A typed storage counts elements; the untyped one used for newer dtypes counts bytes."""
    return numel if dtype in _TYPED_STORAGES else numel * DTYPES[dtype].itemsize


def state_dict_graph(tensors: Sequence[PlannedTensor]) -> Call:
    """The inert graph of an OrderedDict of tensors, exactly as torch.save lays it out."""
    ordered_dict = Global("collections", "OrderedDict")
    root = Call(ordered_dict, ())
    root.dictitems = [(t.name, _tensor_call(t, ordered_dict)) for t in tensors]
    return root


def _tensor_call(t: PlannedTensor, ordered_dict: Global) -> Call:
    hooks = Call(ordered_dict, ())
    storage_class = _TYPED_STORAGES.get(t.dtype)
    if storage_class is not None:
        pid = ("storage", Global("torch", storage_class), t.storage_key, "cpu", t.storage_numel)
        args: tuple[object, ...] = (PersistentRef(pid), t.offset, t.shape, t.stride, False, hooks)
        return Call(Global("torch._utils", "_rebuild_tensor_v2"), args)
    # dtypes without a typed storage class (float8, uint16, ...) go through an untyped storage.
    pid = ("storage", Global("torch.storage", "UntypedStorage"), t.storage_key, "cpu", t.storage_numel)
    args = (PersistentRef(pid), t.offset, t.shape, t.stride, False, hooks, Global("torch", t.dtype))
    return Call(Global("torch._utils", "_rebuild_tensor_v3"), args)
