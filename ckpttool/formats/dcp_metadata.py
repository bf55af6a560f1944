"""A distributed checkpoint's `.metadata`, read without unpickling it.

`torch.distributed.checkpoint` (DCP) writes one `.metadata` per checkpoint folder: a
pickle of its `Metadata` dataclass, which `dcp.load` reads back with plain
`pickle.load` — a hostile `.metadata` runs code there. Here it is decoded by the
code-free pickle machine and interpreted as DCP's own schema, and nothing else: every
global it names must be one of DCP's metadata classes or the few values they hold
(`torch.Size`, dtypes, the layout and memory-format encodings, a `pathlib` path), listed
exactly by `module.name` in `DCP_GLOBALS`, and each must be built the way DCP's
dataclasses pickle (class instantiated with no arguments, then given its fields). Any
other global, shape or pickle problem refuses the file as DCP metadata; `scan` judges
it like any pickle.

What comes out is plain data (`DcpMetadata`): each tensor's global shape and dtype
and its chunks (offsets and sizes in the global tensor, the data file and byte range
that hold it), each non-tensor entry's byte range, and each key's path in the nested
state_dict it was flattened from. `torch_metadata` builds torch's own `Metadata` from
it, for DCP's readers, without unpickling anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from ckpttool.checkpoint import INT64_MAX
from ckpttool.dtypes import DTYPES
from ckpttool.errors import FileAccessError, FormatError, LimitError
from ckpttool.pickle import UNSET, Call, Decoded, Global, decode
from ckpttool.pickle.objects import NEWOBJ
from ckpttool.pickle.vetted import DCP_METADATA_CALLS

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import Metadata

METADATA_NAME = ".metadata"
MAX_METADATA_SIZE = 1 << 30  # tens of MB for the largest models; past this a file is refused

_MD = "torch.distributed.checkpoint.metadata"
_FS = "torch.distributed.checkpoint.filesystem"
METADATA = f"{_MD}.Metadata"
TENSOR = f"{_MD}.TensorStorageMetadata"
BYTES = f"{_MD}.BytesStorageMetadata"
CHUNK = f"{_MD}.ChunkStorageMetadata"
PROPERTIES = f"{_MD}.TensorProperties"
INDEX = f"{_MD}.MetadataIndex"
STORAGE_META = f"{_MD}.StorageMeta"
MEM_FORMAT = f"{_MD}._MEM_FORMAT_ENCODING"
STORAGE_INFO = f"{_FS}._StorageInfo"
SIZE, LAYOUT = "torch.Size", "torch.serialization._get_layout"
TORCH_DTYPES = frozenset(f"torch.{name}" for name in DTYPES if name[:1].islower())
DCP_CLASSES = frozenset({METADATA, TENSOR, BYTES, CHUNK, PROPERTIES, INDEX, STORAGE_META, STORAGE_INFO})
# DCP_METADATA_CALLS: the memory-format Enum and the pathlib classes of StorageMeta.checkpoint_id,
# vetted for scan by the argument forms DCP writes.
DCP_GLOBALS = DCP_CLASSES | {SIZE, LAYOUT} | set(DCP_METADATA_CALLS) | TORCH_DTYPES
_MEMORY_FORMATS = {0: "contiguous_format", 1: "channels_last", 2: "preserve_format"}

Path = tuple[str | int, ...]  # a key's place in the nested state_dict: dict keys and list indices


@dataclass(frozen=True)
class DcpStorage:
    """Where one saved item lies: `length` bytes at `offset` of the data file `file`
    (a name in the checkpoint folder); `transforms` are DCP's stream extensions
    (compression), empty for plain items."""

    file: str
    offset: int
    length: int
    transforms: tuple[str, ...] = ()


@dataclass(frozen=True)
class DcpChunk:
    """One saved piece of a tensor: the box at `offsets` of size `sizes` in the global tensor."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    storage: DcpStorage

    @property
    def numel(self) -> int:
        n = 1
        for s in self.sizes:
            n *= s
        return n


@dataclass
class DcpTensor:
    fqn: str
    dtype: str  # torch's name without `torch.`
    shape: tuple[int, ...]
    chunks: list[DcpChunk]
    requires_grad: bool = False
    layout: str = "strided"
    memory_format: str = "contiguous_format"


@dataclass
class DcpBytes:
    """A non-tensor entry: `torch.save`d bytes of the value."""

    fqn: str
    storage: DcpStorage


@dataclass
class DcpMetadata:
    folder: str
    tensors: dict[str, DcpTensor] = field(default_factory=dict)
    entries: dict[str, DcpBytes] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)  # DCP's planner_data, when the planner wrote it
    order: list[str] = field(default_factory=list)  # every key, tensors and entries, as the file lists them
    version: str | None = None
    save_id: str | None = None

    @property
    def files(self) -> list[str]:
        """The data files the metadata names, sorted."""
        names = {c.storage.file for t in self.tensors.values() for c in t.chunks}
        return sorted(names | {b.storage.file for b in self.entries.values()})


def metadata_path(folder: str) -> str:
    return os.path.join(folder, METADATA_NAME)


def metadata_pickle(folder: str) -> tuple[str, bytes]:
    """(name, bytes) of the folder's `.metadata` pickle, for `scan`."""
    path = metadata_path(folder)
    try:
        size = os.path.getsize(path)
        if size > MAX_METADATA_SIZE:
            raise LimitError(f"{METADATA_NAME} of {size} bytes is larger than {MAX_METADATA_SIZE}", path=folder)
        with open(path, "rb") as f:
            return METADATA_NAME, f.read(MAX_METADATA_SIZE)
    except FileNotFoundError:
        raise FileAccessError(f"no {METADATA_NAME} file: not a distributed checkpoint", path=folder) from None
    except OSError as exc:
        raise FileAccessError(f"cannot read {METADATA_NAME}: {exc.strerror}", path=folder) from None


def decode_metadata(folder: str) -> Decoded:
    name, data = metadata_pickle(folder)
    return decode(data, source=os.path.join(folder, name))


def read_dcp_metadata(folder: str) -> DcpMetadata:
    """The folder's `.metadata` as plain data; FormatError when it is anything but DCP's schema."""
    name, data = metadata_pickle(folder)
    decoded = decode(data, source=os.path.join(folder, name))
    return _Reader(folder).metadata(decoded, len(data))


class _Reader:
    """Walks the inert graph, accepting only what DCP's dataclasses pickle to."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def fail(self, message: str) -> FormatError:
        return FormatError(f"{METADATA_NAME} is not torch.distributed.checkpoint metadata: {message}", path=self.folder)

    def metadata(self, decoded: Decoded, size: int) -> DcpMetadata:
        foreign = sorted({g.qualname for g in decoded.globals} - DCP_GLOBALS)
        if foreign:
            raise self.fail(f"it names {', '.join(foreign[:3])}; see `ckpttool scan`")
        if decoded.problems:
            raise self.fail(f"{decoded.problems[0]}; see `ckpttool scan`")
        if decoded.end != size:
            raise self.fail(f"{size - decoded.end} bytes follow the pickle's STOP; see `ckpttool scan`")
        fields = self.instance(decoded.value, METADATA)
        out = DcpMetadata(self.folder, version=self.optional_str(fields.get("version"), "version"))
        storage = self.storage_data(fields.get("storage_data"))
        items = fields.get("state_dict_metadata")
        if not isinstance(items, dict):
            raise self.fail("state_dict_metadata is not a dict")
        for fqn, item in items.items():
            self.item(out, self.text(fqn, "a key"), item, storage)
            out.order.append(fqn)
        out.paths = self.planner_paths(fields.get("planner_data"), items)
        out.save_id = self.save_id(fields.get("storage_meta"))
        return out

    # -- DCP's classes ----------------------------------------------------------------------------

    def instance(self, node: Any, cls: str) -> dict[str, Any]:
        """The fields of an instance of `cls`, pickled as DCP's dataclasses are: NEWOBJ of the
        class with no arguments, BUILD with a dict of its fields."""
        if not (isinstance(node, Call) and node.func_name == cls and node.kind == NEWOBJ and node.args == ()):
            raise self.fail(f"expected a {cls.rpartition('.')[2]}, found {_what(node)}")
        if node.items is not None or node.dictitems is not None or node.kwargs:
            raise self.fail(f"a {cls.rpartition('.')[2]} filled like a container")
        state = {} if node.state is UNSET or node.state is None else node.state  # no BUILD: no fields set
        if cls == PROPERTIES and isinstance(state, tuple):
            return self.properties_tuple(state)
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise self.fail(f"a {cls.rpartition('.')[2]} whose state is {_what(state)}")
        return state

    def item(self, out: DcpMetadata, fqn: str, node: Any, storage: dict[tuple[str, Any], DcpStorage]) -> None:
        if isinstance(node, Call) and node.func_name == BYTES:
            self.instance(node, BYTES)
            found = storage.get((fqn, None))
            if found is None:
                raise self.fail(f"entry {fqn!r} has no storage_data")
            out.entries[fqn] = DcpBytes(fqn, found)
            return
        fields = self.instance(node, TENSOR)
        props = self.instance(fields.get("properties"), PROPERTIES)
        shape = self.size(fields.get("size"), f"tensor {fqn!r}")
        raw_chunks = fields.get("chunks")
        if not isinstance(raw_chunks, list):
            raise self.fail(f"tensor {fqn!r}: chunks is not a list")
        chunks = [self.chunk(fqn, c, storage) for c in raw_chunks]
        tensor = DcpTensor(fqn, self.dtype(props.get("dtype"), fqn), shape, chunks, props.get("requires_grad") is True)
        if "layout" in props:
            tensor.layout = self.layout(props["layout"])
        if "memory_format" in props:
            tensor.memory_format = self.memory_format(props["memory_format"])
        self.check_tiling(tensor)
        out.tensors[fqn] = tensor

    def check_tiling(self, tensor: DcpTensor) -> None:
        """The chunks lie inside the tensor and cover it once: no gap, no overlap."""
        where = f"tensor {tensor.fqn!r} of shape {list(tensor.shape)}"
        for c in tensor.chunks:
            if len(c.offsets) != len(tensor.shape) or len(c.sizes) != len(tensor.shape):
                raise self.fail(f"{where} has a chunk of {len(c.sizes)} dimensions")
            if any(o + n > d for o, n, d in zip(c.offsets, c.sizes, tensor.shape, strict=True)):
                raise self.fail(f"{where} has a chunk at {list(c.offsets)} of size {list(c.sizes)} outside it")
        boxes = [c for c in tensor.chunks if c.numel]
        numel = 1
        for d in tensor.shape:
            numel *= d
        if sum(c.numel for c in boxes) != numel or _overlap(boxes):
            raise self.fail(f"{where}: its chunks do not cover it exactly once")

    def chunk(self, fqn: str, node: Any, storage: dict[tuple[str, Any], DcpStorage]) -> DcpChunk:
        fields = self.instance(node, CHUNK)
        offsets = self.size(fields.get("offsets"), f"a chunk of {fqn!r}")
        sizes = self.size(fields.get("sizes"), f"a chunk of {fqn!r}")
        found = storage.get((fqn, offsets))
        if found is None:
            raise self.fail(f"the chunk of {fqn!r} at offsets {list(offsets)} has no storage_data")
        return DcpChunk(offsets, sizes, found)

    def properties_tuple(self, state: tuple[Any, ...]) -> dict[str, Any]:
        """TensorProperties.__getstate__: (dtype, layout, requires_grad, memory format code, pin_memory)."""
        if len(state) != 5:
            raise self.fail(f"TensorProperties state of {len(state)} items, expected 5")
        dtype, layout, requires_grad, encoding, _pin = state
        return {"dtype": dtype, "layout": layout, "requires_grad": requires_grad, "memory_format": encoding}

    def layout(self, node: Any) -> str:
        if isinstance(node, Call) and node.func_name == LAYOUT and len(node.args) == 1:
            name = node.args[0]
            if isinstance(name, str) and name.startswith("torch."):
                return name.removeprefix("torch.")
        raise self.fail(f"a tensor layout given as {_what(node)}")

    def memory_format(self, node: Any) -> str:
        if isinstance(node, Call) and node.func_name == MEM_FORMAT and len(node.args) == 1:
            code = node.args[0]
            if type(code) is int and code in _MEMORY_FORMATS:
                return _MEMORY_FORMATS[code]
        raise self.fail(f"a memory format given as {_what(node)}")

    def storage_data(self, node: Any) -> dict[tuple[str, Any], DcpStorage]:
        if not isinstance(node, dict):
            raise self.fail(f"storage_data is {_what(node)}, not the file system writer's dict")
        out: dict[tuple[str, Any], DcpStorage] = {}
        for key, value in node.items():
            index = self.instance(key, INDEX)
            fqn = self.text(index.get("fqn"), "a MetadataIndex fqn")
            offset = index.get("offset")
            where = (fqn, None if offset is None else self.size(offset, f"the index of {fqn!r}"))
            if where in out:
                raise self.fail(f"storage_data names {fqn!r} at {where[1]} twice")
            out[where] = self.storage_info(value, fqn)
        return out

    def storage_info(self, node: Any, fqn: str) -> DcpStorage:
        fields = self.instance(node, STORAGE_INFO)
        name = self.text(fields.get("relative_path"), f"the data file of {fqn!r}")
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise self.fail(f"data file {name!r} of {fqn!r} is not a file name inside the folder")
        offset, length = fields.get("offset"), fields.get("length")
        if not (_is_count(offset) and _is_count(length)):
            raise self.fail(f"{fqn!r}: offset {offset!r} and length {length!r} are not byte counts")
        transforms = fields.get("transform_descriptors") or ()
        if not isinstance(transforms, (list, tuple)) or not all(isinstance(t, str) for t in transforms):
            raise self.fail(f"{fqn!r}: transform_descriptors {_what(transforms)}")
        return DcpStorage(name, offset, length, tuple(transforms))

    def planner_paths(self, node: Any, items: dict[Any, Any]) -> dict[str, Path]:
        """DefaultSavePlanner's mapping of each flattened key to its path in the nested
        state_dict; anything else (a custom planner's data) is ignored: keys stay flat."""
        if not isinstance(node, dict) or set(node) != set(items):
            return {}
        paths: dict[str, Path] = {}
        for key, value in node.items():
            if not (isinstance(value, tuple) and value and all(type(p) in (str, int) for p in value)):
                return {}
            paths[key] = value
        return paths

    def save_id(self, node: Any) -> str | None:
        if node is None:
            return None
        fields = self.instance(node, STORAGE_META)
        value = fields.get("save_id")
        return value if isinstance(value, str) else None

    # -- values -----------------------------------------------------------------------------------

    def size(self, node: Any, what: str) -> tuple[int, ...]:
        if isinstance(node, Call) and node.func_name == SIZE and node.kind != NEWOBJ and len(node.args) == 1:
            dims = node.args[0]
            if isinstance(dims, (tuple, list)) and all(type(d) is int and 0 <= d <= INT64_MAX for d in dims):
                return tuple(dims)
        raise self.fail(f"{what}: a size given as {_what(node)}")

    def dtype(self, node: Any, fqn: str) -> str:
        if isinstance(node, Global) and node.qualname in TORCH_DTYPES:
            return node.name
        raise self.fail(f"tensor {fqn!r}: dtype given as {_what(node)}")

    def text(self, node: Any, what: str) -> str:
        if isinstance(node, str):
            return node
        raise self.fail(f"{what} is {_what(node)}, not a string")

    def optional_str(self, node: Any, what: str) -> str | None:
        return None if node is None else self.text(node, what)


def _overlap(chunks: list[DcpChunk]) -> bool:
    """Whether two chunks share an element: swept along the dimension the chunks split most
    (rows for Shard(0), columns for Shard(1)), each compared only with those that start
    before it ends there, so N chunks of a 1-D split cost N comparisons, not N**2."""
    if len(chunks) < 2 or not chunks[0].offsets:
        return len(chunks) > 1
    dims = range(len(chunks[0].offsets))
    d = max(dims, key=lambda k: len({c.offsets[k] for c in chunks}))
    ordered = sorted(chunks, key=lambda c: c.offsets[d])
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.offsets[d] >= a.offsets[d] + a.sizes[d]:
                break
            if _meet(a, b):
                return True
    return False


def _meet(a: DcpChunk, b: DcpChunk) -> bool:
    spans = zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True)
    return all(b_at < a_at + a_n and a_at < b_at + b_n for a_at, a_n, b_at, b_n in spans)


def _is_count(value: Any) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= INT64_MAX


def _what(node: Any) -> str:
    if isinstance(node, Call):
        return f"a call of {node.func_name or 'a computed callable'}"
    if isinstance(node, Global):
        return f"the global {node.qualname}"
    return f"a {type(node).__name__}"


# -- torch's own Metadata, built without unpickling ---------------------------------------------------


def torch_metadata(meta: DcpMetadata) -> Metadata:
    """torch's `Metadata` for `meta`, to hand to DCP's FileSystemReader (whose own
    `read_metadata` would `pickle.load` the file): built from the validated data."""
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        StorageMeta,
        TensorProperties,
        TensorStorageMetadata,
    )

    items: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {}
    storage: dict[MetadataIndex, _StorageInfo] = {}

    def info(s: DcpStorage) -> _StorageInfo:
        return _StorageInfo(s.file, s.offset, s.length, list(s.transforms) or None)

    for fqn, tensor in meta.tensors.items():
        chunks = [ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)) for c in tensor.chunks]
        props = TensorProperties(dtype=getattr(torch, tensor.dtype), requires_grad=tensor.requires_grad)
        items[fqn] = TensorStorageMetadata(props, torch.Size(tensor.shape), chunks)
        for i, chunk in enumerate(tensor.chunks):
            storage[MetadataIndex(fqn, chunk.offsets, i)] = info(chunk.storage)
    for fqn, entry in meta.entries.items():
        items[fqn] = BytesStorageMetadata()
        storage[MetadataIndex(fqn)] = info(entry.storage)
    planner_data = dict(meta.paths) if meta.paths else None
    storage_meta = StorageMeta(checkpoint_id=meta.folder, save_id=meta.save_id)
    return Metadata(items, planner_data, storage, storage_meta, meta.version)
