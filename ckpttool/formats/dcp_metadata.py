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
from ckpttool.formatnames import DCP_METADATA_FILE
from ckpttool.pickle import UNSET, Call, Decoded, Global, decode
from ckpttool.pickle.objects import NEWOBJ
from ckpttool.pickle.vetted import DCP_METADATA_CALLS

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import Metadata

NEMO_WEIGHTS, NEMO_CONTEXT = "weights", "context"  # NeMo 2: the DCP folder beside the model's context
MAX_METADATA_SIZE = 1 << 30  # tens of MB for the largest models; past this a file is refused

_MD = "torch.distributed.checkpoint.metadata"
_FS = "torch.distributed.checkpoint.filesystem"
_PLANNER = "torch.distributed.checkpoint.planner"
_MCORE = "megatron.core.dist_checkpointing.strategies.torch"
METADATA = f"{_MD}.Metadata"
TENSOR = f"{_MD}.TensorStorageMetadata"
BYTES = f"{_MD}.BytesStorageMetadata"
CHUNK = f"{_MD}.ChunkStorageMetadata"
PROPERTIES = f"{_MD}.TensorProperties"
INDEX = f"{_MD}.MetadataIndex"
STORAGE_META = f"{_MD}.StorageMeta"
MEM_FORMAT = f"{_MD}._MEM_FORMAT_ENCODING"
STORAGE_INFO = f"{_FS}._StorageInfo"
STORAGE_PREFIX = f"{_FS}._StoragePrefix"  # a save plan's storage_data once the writer prepared it
# Megatron-Core's additions: the save plans (`all_local_plans`), and before 0.14 its own
# subclasses of Metadata and SavePlan, each with `mcore_data` per key.
SAVE_PLAN, WRITE_ITEM = f"{_PLANNER}.SavePlan", f"{_PLANNER}.WriteItem"
TENSOR_WRITE, WRITE_ITEM_TYPE = f"{_PLANNER}.TensorWriteData", f"{_PLANNER}.WriteItemType"
MCORE_METADATA, MCORE_SAVE_PLAN = f"{_MCORE}.MCoreMetadata", f"{_MCORE}.MCoreSavePlan"
MEGATRON_CLASSES = frozenset({SAVE_PLAN, WRITE_ITEM, TENSOR_WRITE, MCORE_METADATA, MCORE_SAVE_PLAN, STORAGE_PREFIX})
SIZE, LAYOUT = "torch.Size", "torch.serialization._get_layout"
TORCH_DTYPES = frozenset(f"torch.{name}" for name in DTYPES if name[:1].islower())
DCP_CLASSES = MEGATRON_CLASSES | {METADATA, TENSOR, BYTES, CHUNK, PROPERTIES, INDEX, STORAGE_META, STORAGE_INFO}
# DCP_METADATA_CALLS: the memory-format Enum and the pathlib classes of StorageMeta.checkpoint_id,
# vetted for scan by the argument forms DCP writes.
DCP_GLOBALS = DCP_CLASSES | {SIZE, LAYOUT} | set(DCP_METADATA_CALLS) | TORCH_DTYPES
_MEMORY_FORMATS = {0: "contiguous_format", 1: "channels_last", 2: "preserve_format"}
_WRITE_ITEM_TYPES = (1, 2, 3)  # TENSOR, SHARD, BYTE_IO
_PLAN_FIELDS = frozenset({"items", "storage_data", "planner_data", "usable", "mcore_data"})
_WRITE_ITEM_FIELDS = frozenset({"index", "type", "bytes_io_data", "tensor_data"})
REFORMULATED = "nd_reformulated_orig_global_shape"  # mcore_data of a tensor saved with flattened_range

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
    # Megatron-Core before 0.14: tensors saved with `flattened_range`, by key, with their real
    # global shape (the one in `tensors` is reformulated: grid axes, then the flat local chunk).
    reformulated: dict[str, tuple[int, ...]] = field(default_factory=dict)
    save_plans: int = 0  # Megatron-Core's all_local_plans, one per rank
    mcore: bool = False  # written by Megatron-Core before 0.14 (MCoreMetadata)

    @property
    def files(self) -> list[str]:
        """The data files the metadata names, sorted."""
        names = {c.storage.file for t in self.tensors.values() for c in t.chunks}
        return sorted(names | {b.storage.file for b in self.entries.values()})


def dcp_folder(path: str) -> str:
    """Where a checkpoint's DCP files lie: `path` itself, or the `weights/` folder of a NeMo 2
    checkpoint (`weights/` with `.metadata`, beside `context/`)."""
    weights = os.path.join(path, NEMO_WEIGHTS)
    nemo = os.path.isdir(os.path.join(path, NEMO_CONTEXT)) and os.path.isfile(os.path.join(weights, DCP_METADATA_FILE))
    return weights if nemo and not os.path.exists(os.path.join(path, DCP_METADATA_FILE)) else path


def metadata_path(folder: str) -> str:
    return os.path.join(dcp_folder(folder), DCP_METADATA_FILE)


def metadata_pickle(folder: str) -> tuple[str, bytes]:
    """(name, bytes) of the folder's `.metadata` pickle, for `scan`; the name is relative to
    `folder` (`weights/.metadata` in a NeMo 2 checkpoint)."""
    path = metadata_path(folder)
    try:
        size = os.path.getsize(path)
        if size > MAX_METADATA_SIZE:
            raise LimitError(f"{DCP_METADATA_FILE} of {size} bytes is larger than {MAX_METADATA_SIZE}", path=folder)
        with open(path, "rb") as f:
            return os.path.relpath(path, folder), f.read(MAX_METADATA_SIZE)
    except FileNotFoundError:
        raise FileAccessError(f"no {DCP_METADATA_FILE} file: not a distributed checkpoint", path=folder) from None
    except OSError as exc:
        raise FileAccessError(f"cannot read {DCP_METADATA_FILE}: {exc.strerror}", path=folder) from None


def read_dcp_metadata(folder: str) -> DcpMetadata:
    """The folder's `.metadata` as plain data; FormatError when it is anything but DCP's schema."""
    name, data = metadata_pickle(folder)
    return metadata_of(folder, decode(data, source=os.path.join(folder, name)), len(data))


def metadata_of(folder: str, decoded: Decoded, size: int) -> DcpMetadata:
    """`read_dcp_metadata` of a `.metadata` pickle already decoded (by a scan), `size` bytes long."""
    return _Reader(dcp_folder(folder)).metadata(decoded, size)


class _Reader:
    """Walks the inert graph, accepting only what DCP's dataclasses pickle to."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def fail(self, message: str) -> FormatError:
        return FormatError(
            f"{DCP_METADATA_FILE} is not torch.distributed.checkpoint metadata: {message}", path=self.folder
        )

    def metadata(self, decoded: Decoded, size: int) -> DcpMetadata:
        foreign = sorted({g.qualname for g in decoded.globals} - DCP_GLOBALS)
        if foreign:
            raise self.fail(f"it names {', '.join(foreign[:3])}; see `ckpttool scan`")
        if decoded.problems:
            raise self.fail(f"{decoded.problems[0]}; see `ckpttool scan`")
        if decoded.end != size:
            raise self.fail(f"{size - decoded.end} bytes follow the pickle's STOP; see `ckpttool scan`")
        cls = MCORE_METADATA if _is_call_of(decoded.value, MCORE_METADATA) else METADATA
        fields = self.instance(decoded.value, cls)
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
        out.save_plans = self.save_plans(fields.get("all_local_plans"))
        out.reformulated = self.mcore_data(fields.get("mcore_data"), out)
        out.mcore = cls == MCORE_METADATA
        return out

    # -- Megatron-Core's additions -----------------------------------------------------------------

    def save_plans(self, node: Any) -> int:
        """`all_local_plans`: checked to be DCP's SavePlans (or MCoreSavePlans) of WriteItems,
        which megatron-core compares with its next save's plans; nothing in them is used."""
        if node is None:
            return 0
        if not isinstance(node, list):
            raise self.fail(f"all_local_plans is {_what(node)}, not a list")
        for plan in node:
            cls = MCORE_SAVE_PLAN if _is_call_of(plan, MCORE_SAVE_PLAN) else SAVE_PLAN
            fields = self.instance(plan, cls)
            self.only(fields, _PLAN_FIELDS, "SavePlan")
            items = fields.get("items", [])
            if not isinstance(items, list):
                raise self.fail("a SavePlan whose items are not a list")
            self.storage_prefix(fields.get("storage_data"))
            if not isinstance(fields.get("usable", True), bool):
                raise self.fail("a SavePlan whose usable is not a bool")
            self.plain_dict(fields.get("planner_data"), "a SavePlan's planner_data")
            self.plain_dict(fields.get("mcore_data"), "a SavePlan's mcore_data")
            for item in items:
                self.write_item(item)
        return len(node)

    def storage_prefix(self, node: Any) -> None:
        """A save plan's storage_data: none, or the file system writer's `_StoragePrefix(prefix)`."""
        if node is not None:
            fields = self.instance(node, STORAGE_PREFIX)
            self.only(fields, frozenset({"prefix"}), "_StoragePrefix")
            self.text(fields.get("prefix"), "a _StoragePrefix's prefix")

    def write_item(self, node: Any) -> None:
        fields = self.instance(node, WRITE_ITEM)
        self.only(fields, _WRITE_ITEM_FIELDS, "WriteItem")
        index = self.instance(fields.get("index"), INDEX)
        self.text(index.get("fqn"), "a WriteItem's fqn")
        kind = fields.get("type")
        if not (isinstance(kind, Call) and kind.func_name == WRITE_ITEM_TYPE and kind.kind != NEWOBJ):
            raise self.fail(f"a WriteItem type given as {_what(kind)}")
        if len(kind.args) != 1 or type(kind.args[0]) is not int or kind.args[0] not in _WRITE_ITEM_TYPES:
            raise self.fail(f"a WriteItem type of {kind.args!r}")
        if fields.get("bytes_io_data") is not None:
            raise self.fail("a WriteItem with bytes_io_data")
        data = fields.get("tensor_data")
        if data is not None:
            tensor = self.instance(data, TENSOR_WRITE)
            chunk = self.instance(tensor.get("chunk"), CHUNK)
            self.size(chunk.get("offsets"), "a WriteItem's chunk")
            self.size(chunk.get("sizes"), "a WriteItem's chunk")
            self.dtype(self.instance(tensor.get("properties"), PROPERTIES).get("dtype"), "a WriteItem")
            self.size(tensor.get("size"), "a WriteItem")

    def mcore_data(self, node: Any, out: DcpMetadata) -> dict[str, tuple[int, ...]]:
        """MCoreMetadata's mcore_data: per key, the original global shape of a tensor saved
        with flattened_range (its stored shape reformulated); nothing else is kept."""
        reformulated: dict[str, tuple[int, ...]] = {}
        for key, value in self.plain_dict(node, "mcore_data").items():
            if not isinstance(value, dict):
                raise self.fail(f"mcore_data of {key!r} is {_what(value)}")
            shape = value.get(REFORMULATED)
            if shape is None:
                continue
            if not (isinstance(shape, (tuple, list)) and all(type(d) is int and 0 <= d <= INT64_MAX for d in shape)):
                raise self.fail(f"mcore_data of {key!r}: {REFORMULATED} is {_what(shape)}")
            if key in out.tensors:
                reformulated[key] = tuple(shape)
        return reformulated

    def plain_dict(self, node: Any, what: str) -> dict[str, Any]:
        """A dict keyed by strings whose values hold no call or global (or None: empty)."""
        if node is None:
            return {}
        if not (isinstance(node, dict) and all(isinstance(k, str) for k in node) and _is_plain(node)):
            raise self.fail(f"{what} is {_what(node)}, not plain data")
        return node

    def only(self, fields: dict[str, Any], known: frozenset[str], what: str) -> None:
        extra = sorted(set(fields) - known)
        if extra:
            raise self.fail(f"a {what} with the unknown fields {', '.join(extra[:3])}")

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


def _is_call_of(node: Any, cls: str) -> bool:
    return isinstance(node, Call) and node.func_name == cls


def _is_plain(node: Any, depth: int = 0) -> bool:
    """Data of str, int, float, bool and None in dicts, lists and tuples: no call, no global."""
    if depth > 16:
        return False
    if isinstance(node, dict):
        return all(_is_plain(k, depth + 1) and _is_plain(v, depth + 1) for k, v in node.items())
    if isinstance(node, (list, tuple)):
        return all(_is_plain(v, depth + 1) for v in node)
    return node is None or type(node) in (str, int, float, bool)


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
