"""Where a tensor to be written comes from: a reference into a file, or a loaded tensor.

Both answer the same questions: dtype and shape, the bytes as a file range when they
can be copied as they are, the tensor itself when they cannot, and an identity that
tells tied tensors (one view of one storage, under several names) apart.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Protocol

from ckpttool.checkpoint import Checkpoint, TensorRef, dtensor_layout
from ckpttool.errors import WeightsNotFoundError, about
from ckpttool.tensordata import ByteRange, direct_range, direct_ranges, load_tensor
from ckpttool.weights import NamedTensor, all_tensors, find_weights, resolve_path

if TYPE_CHECKING:
    import torch


class Source(Protocol):
    dtype: str
    shape: tuple[int, ...]
    numel: int
    layout: str
    device: str
    has_data: bool

    def tensor(self) -> torch.Tensor: ...
    def byte_range(self) -> ByteRange | None: ...
    def byte_ranges(self) -> list[ByteRange] | None: ...
    def identity(self) -> Hashable | None: ...


class FileSource:
    def __init__(self, ref: TensorRef) -> None:
        self.ref = ref
        self.dtype, self.shape, self.numel = ref.dtype, ref.shape, ref.numel
        self.layout, self.device = ref.layout, ref.device
        self.has_data = ref.storage is not None and ref.storage.record is not None

    def tensor(self) -> torch.Tensor:
        return load_tensor(self.ref)

    def byte_range(self) -> ByteRange | None:
        return direct_range(self.ref)

    def byte_ranges(self) -> list[ByteRange] | None:
        """The bytes as ranges of files, one after another (a tensor gathered from slices)."""
        return direct_ranges(self.ref)

    def identity(self) -> Hashable | None:
        ref = self.ref
        return (id(ref.storage), ref.offset, ref.shape, ref.stride, ref.dtype)


class TrustedSource:
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value.detach()
        self.dtype = str(value.dtype).removeprefix("torch.")
        self.shape, self.numel = tuple(value.shape), value.numel()
        self.layout = str(value.layout).removeprefix("torch.")
        self.device, self.has_data = str(value.device), True

    def tensor(self) -> torch.Tensor:
        return self.value

    def byte_range(self) -> ByteRange | None:
        return None

    def byte_ranges(self) -> list[ByteRange] | None:
        return None

    def identity(self) -> Hashable | None:
        v = self.value
        return (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride(), v.dtype)


def file_sources(checkpoint: Checkpoint, root: str | None) -> tuple[list[tuple[str, Source]], str | None, list[str]]:
    try:
        weights = find_weights(checkpoint.root, root)
    except WeightsNotFoundError:
        if not root:
            raise
        return _nested_sources(checkpoint, root)
    if weights.root is None:
        why = weights.notes[0] if weights.notes else "name them with --root"
        raise WeightsNotFoundError(f"no weights found; {why}", path=checkpoint.path)
    sources: list[tuple[str, Source]] = [(t.key, FileSource(t.tensor)) for t in weights.tensors]
    return sources, weights.root, list(weights.notes) + _shard_notes(weights.tensors)


def _shard_notes(tensors: list[NamedTensor]) -> list[str]:
    """A rank's file of DTensors (FSDP2, tensor parallel) holds its local shards only: those
    are what is written, as `DTensor.to_local()` gives them."""
    shards = sum(1 for t in tensors if t.tensor.extra and dtensor_layout(t.tensor))
    if not shards:
        return []
    return [
        f"{shards} DTensor{'s' if shards != 1 else ''} written as this rank's local shard{'s' if shards != 1 else ''}"
        " (DTensor.to_local()), not the whole tensors: inspect shows each one's global shape and placement"
    ]


def _nested_sources(checkpoint: Checkpoint, root: str) -> tuple[list[tuple[str, Source]], str, list[str]]:
    """A `--root` that is no state_dict (an optimizer state: `state.0.exp_avg` ...): its
    tensors under their dotted paths below it, as a DCP folder's `--root` gives them."""
    with about(checkpoint.path):
        tensors = all_tensors(resolve_path(checkpoint.root, root))
    if not tensors:
        raise WeightsNotFoundError(f"--root {root!r} holds no tensors", path=checkpoint.path)
    note = f"--root {root!r} is no state_dict: its tensors are written under their paths below it"
    return [(t.key, FileSource(t.tensor)) for t in tensors], root, [note]
