"""The common model every format is read into.

A `Checkpoint` holds the file's object tree with tensors as `TensorRef`s: dtype,
shape, stride and storage offset, pointing at a `Storage` that knows where its bytes
lie (`Record`) and which device they are restored to. Tensors that view one storage
share the `Storage` object, so tied weights and slices stay linked. Pickled
instances are `PickledObject`s (class name + state); nothing here was imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from math import prod
from typing import TYPE_CHECKING, Any

from ckpttool.dtypes import DTYPES
from ckpttool.errors import TensorLayoutError
from ckpttool.formatnames import FormatName

if TYPE_CHECKING:  # annotations only: tensordata reads records, and imports this module
    from ckpttool.tensordata import ByteRange

INT64_MAX = (1 << 63) - 1


@dataclass(slots=True, eq=False)
class Record:
    """Where a storage's bytes are: a byte range of one file, maybe compressed."""

    path: str
    name: str  # the record's name in its container, for messages
    offset: int  # of the first byte; -1 while a zip local header is unread
    size: int  # bytes on disk
    compressed: bool = False
    crc: int | None = None  # a zip record's CRC-32 of its (inflated) bytes; 0: none recorded
    resolve: Callable[[], int] | None = None  # the offset, when it is -1 (zip records)
    viewed_by: Callable[[], list[str]] | None = None  # the keys of the tensors that view it, for messages
    verified: bool = False  # its bytes were read whole once and matched `crc`
    # all of the record's bytes when they are not one byte range of a file (a DCP tensor
    # assembled from the chunks each rank saved); such a record is never mapped
    gather: Callable[[], bytearray] | None = None
    # the byte ranges a gathered record's bytes are, in order, when each is a plain range of
    # a file (copied file to file), else None
    parts: Callable[[], list[ByteRange] | None] | None = None

    def data_offset(self) -> int:
        if self.offset < 0:
            assert self.resolve is not None, "a record whose offset is unknown has a resolver"
            self.offset = self.resolve()
        return self.offset


@dataclass(slots=True, eq=False)
class Storage:
    """One storage as the file declares it."""

    key: str
    dtype: str
    numel: int
    location: str
    record: Record | None = None
    byteorder: str = "little"

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize

    @property
    def nbytes(self) -> int:
        return byte_size(self.numel, self.dtype)


def byte_size(numel: int, dtype: str) -> int:
    """Bytes for `numel` elements (sub-byte safetensors types round up)."""
    return (numel * DTYPES[dtype].bits + 7) // 8


@dataclass(slots=True, eq=False)
class TensorRef:
    """A tensor as a reference: nothing of its data has been read."""

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # storage offset, in elements
    storage: Storage | None  # None for meta tensors
    requires_grad: bool = False
    kind: str = "tensor"  # "parameter" for nn.Parameter, or a subclass name
    layout: str = "strided"
    extra: dict[str, Any] | None = None  # quantizer parameters, sparse parts
    meta_device: str | None = None  # device of a tensor saved without storage

    @property
    def device(self) -> str:
        if self.storage is None:
            return self.meta_device or "meta"
        return self.storage.location

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize

    @property
    def nbytes(self) -> int:
        return byte_size(self.numel, self.dtype)

    def is_contiguous(self) -> bool:
        """Row-major without gaps (torch's rule: strides of size-1 dimensions do not matter)."""
        return _is_contiguous(self.shape, self.stride)

    def span(self) -> tuple[int, int]:
        """[first, last + 1) indices, in this tensor's elements, that the view touches."""
        if self.numel == 0:
            return self.offset, self.offset
        last = self.offset
        for n, s in zip(self.shape, self.stride, strict=True):
            last += (n - 1) * s
        return self.offset, last + 1

    def byte_span(self) -> tuple[int, int]:
        """The same span in bytes of the storage (an untyped storage counts bytes)."""
        first, end = self.span()
        return first * self.itemsize, end * self.itemsize


@lru_cache(maxsize=1024)  # a model repeats a few layouts: each is worked out once
def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    dim = _same_rank(shape, stride)
    expected = 1
    while dim:  # an index loop: zip(strict=True) over reversed() costs three times as much
        dim -= 1
        n = shape[dim]
        if n != 1 and stride[dim] != expected:
            return prod(shape) == 0
        expected *= n
    return True


def _same_rank(shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """The number of dimensions; a stride per size, or ValueError as zip(strict=True) raises."""
    if len(shape) != len(stride):
        raise ValueError(f"{len(shape)} sizes but {len(stride)} strides")
    return len(shape)


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


def validate_layout(tensor: TensorRef, path: str, key: str) -> None:
    """Reject shapes, strides and offsets that do not fit the storage, before any allocation.
    `path` and `key` name the tensor in an error (its text is made only then: 10^5 tensors)."""
    try:
        _check_layout(tensor)
    except TensorLayoutError as exc:
        raise TensorLayoutError(f"{path}: tensor {key!r}: {exc.message}") from None


def _check_layout(tensor: TensorRef) -> None:
    numel, span = _view_extent(tensor.shape, tensor.stride)
    if tensor.offset < 0 or numel > INT64_MAX:
        raise TensorLayoutError(f"invalid storage offset {tensor.offset} or element count")
    storage = tensor.storage
    if storage is None or numel == 0:
        return
    end = (tensor.offset + span) * DTYPES[tensor.dtype].itemsize
    if end > storage.nbytes:
        shape, stride = tensor.shape, tensor.stride
        raise TensorLayoutError(
            f"shape {list(shape)} stride {list(stride)} offset {tensor.offset} reaches byte "
            f"{end - 1} of storage {storage.key!r}, which holds {storage.nbytes} bytes"
        )


@lru_cache(maxsize=1024)  # a model repeats a few layouts (every layer's): each is worked out once
def _view_extent(shape: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, int]:
    """A view's element count, and how many elements of its storage it spans from its first
    one (unless it is empty); TensorLayoutError for sizes or strides no tensor has."""
    if len(shape) != len(stride):
        raise TensorLayoutError(f"{len(shape)} sizes but {len(stride)} strides")
    if shape and (min(shape) < 0 or max(shape) > INT64_MAX):
        raise TensorLayoutError(f"invalid size {list(shape)}")
    if stride and (min(stride) < 0 or max(stride) > INT64_MAX):
        raise TensorLayoutError(f"invalid stride {list(stride)}")
    span = 1
    for n, s in zip(shape, stride, strict=True):  # lengths checked above
        span += (n - 1) * s
    return prod(shape), span


@dataclass(frozen=True)
class DTensorLayout:
    """Where a DTensor's local shard (the TensorRef that carries this in `extra["dtensor"]`)
    lies in the whole tensor: its global shape, one placement per mesh dimension as torch
    writes them (`Shard(dim=0)`, `Replicate()`, `Partial(sum)`, `_StridedShard(dim=0, sf=2)`),
    the mesh, and this rank's coordinate on it (None where the file does not say)."""

    global_shape: tuple[int, ...]
    placements: tuple[str, ...]
    mesh_shape: tuple[int, ...]
    mesh_dim_names: tuple[str, ...] | None
    device_type: str
    coordinate: tuple[int, ...] | None


def dtensor_layout(tensor: TensorRef) -> DTensorLayout | None:
    layout = (tensor.extra or {}).get("dtensor")
    return layout if isinstance(layout, DTensorLayout) else None


@dataclass(frozen=True)
class ScriptDeclaration:
    """What a TorchScript class declares in its archive's `code/` (read as text, never run):
    which attributes are parameters and buffers, and whether it is a Module at all."""

    is_module: bool
    parameters: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()


@dataclass(eq=False)
class PickledObject:
    """An instance of a pickled class: its name, constructor arguments and state."""

    cls: str
    args: tuple[Any, ...] = ()
    state: Any = None
    items: list[Any] | None = None
    dictitems: dict[Any, Any] | None = None
    declared: ScriptDeclaration | None = None  # TorchScript objects whose class code/ declares

    @property
    def attributes(self) -> dict[Any, Any]:
        """The instance dict BUILD would set (also from a `(dict, slots)` state)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            merged = dict(state[0]) if isinstance(state[0], dict) else {}
            merged.update(state[1])
            return merged
        return state if isinstance(state, dict) else {}

    @property
    def is_module(self) -> bool:
        attrs = self.attributes
        return "_parameters" in attrs and "_modules" in attrs


@dataclass(eq=False)
class OpaqueCall:
    """A call ckpttool does not interpret: shown by name, never made. What BUILD,
    APPEND(S) and SETITEM(S) did to the result is kept too: two calls with the same
    arguments can still hold different values (a numpy array's bytes are its state)."""

    func: str | None
    args: tuple[Any, ...]
    state: Any = None
    items: list[Any] | None = None
    dictitems: dict[Any, Any] | None = None

    def __str__(self) -> str:
        return f"<{self.func or 'computed callable'}(...)>"


@dataclass(frozen=True)
class GlobalName:
    """A reference to a global used as a value (a dtype, a class, a function)."""

    qualname: str

    def __str__(self) -> str:
        return self.qualname


@dataclass(frozen=True)
class Chunk:
    """One saved piece of a tensor that a checkpoint splits (a DCP checkpoint's shards):
    the box at `offsets` of size `sizes` in the whole tensor, stored as `length` bytes at
    `offset` of `file`, which the rank `rank` wrote (None where the name does not say)."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    offset: int
    length: int
    rank: int | None = None


@dataclass
class Checkpoint:
    """Everything known about one checkpoint file (or sharded folder)."""

    path: str
    format: FormatName
    file_size: int
    root: Any
    storages: dict[str, Storage] = field(default_factory=dict)
    byteorder: str = "little"
    metadata: dict[str, str] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    # What bare persistent ids name, where a format uses them (legacy tar: tensors by key).
    persistent_objects: dict[str, Any] = field(default_factory=dict)
    # How each tensor is stored in pieces, by its full key, where a format says (DCP).
    chunks: dict[str, list[Chunk]] = field(default_factory=dict)
    # Why a tensor cannot be converted, by its full key (Megatron-Core's layouts that need its code).
    unconvertible: dict[str, str] = field(default_factory=dict)
