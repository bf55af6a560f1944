"""Access to tensor bytes: byte ranges in the file, streamed; torch tensors on demand.

A tensor's bytes are read from its storage's record, only the span the view
touches, honouring storage offset, stride and byteorder. Nothing maps or holds the
whole file: a read allocates at most one tensor's span, copies and comparisons go
through fixed-size chunks, and contiguous tensors are copied file to file by the
kernel. torch is imported only by the functions that build torch tensors.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from ckpttool.checkpoint import Storage, TensorRef
from ckpttool.dtypes import DTYPES
from ckpttool.errors import FormatError, LimitError

if TYPE_CHECKING:
    import torch

CHUNK = 16 << 20


@dataclass(frozen=True)
class ByteRange:
    """`size` bytes at `offset` of the file `path`."""

    path: str
    offset: int
    size: int


def direct_range(tensor: TensorRef) -> ByteRange | None:
    """The tensor's bytes as one range of its file, when they can be used as they are:
    contiguous, little-endian (or single-byte), stored uncompressed."""
    storage = tensor.storage
    if storage is None or storage.record is None or storage.record.compressed:
        return None
    if not tensor.is_contiguous() or tensor.layout != "strided":
        return None
    if storage.byteorder != "little" and storage.itemsize > 1:  # swapped on load, as torch does
        return None
    start = storage.record.data_offset() + tensor.offset * tensor.itemsize
    return ByteRange(storage.record.path, start, tensor.nbytes)


def read_span(tensor: TensorRef) -> tuple[bytearray, int]:
    """The bytes of the storage span the tensor views, and the span's first element."""
    storage = tensor.storage
    if storage is None or storage.record is None:
        raise FormatError(f"tensor on {tensor.device} has no data in the file")
    first_byte, end_byte = tensor.byte_span()
    if storage.record.compressed:
        return bytearray(inflate_storage(storage)[first_byte:end_byte]), tensor.offset
    start = storage.record.data_offset() + first_byte
    return read_range(ByteRange(storage.record.path, start, end_byte - first_byte)), tensor.offset


def read_range(span: ByteRange) -> bytearray:
    buffer = bytearray(span.size)
    with open(span.path, "rb") as f:
        got = 0
        view = memoryview(buffer)
        while got < span.size:
            n = os.preadv(f.fileno(), [view[got : got + CHUNK]], span.offset + got)
            if n == 0:
                raise FormatError(f"file ends inside a storage record (byte {span.offset + got})", path=span.path)
            got += n
    return buffer


def inflate_storage(storage: Storage) -> bytes:
    """A DEFLATE-compressed record, inflated to exactly the size the storage declares."""
    record = storage.record
    assert record is not None
    raw = read_range(ByteRange(record.path, record.data_offset(), record.size))
    inflater = zlib.decompressobj(-15)
    try:
        out = inflater.decompress(bytes(raw), storage.nbytes + 1)
    except zlib.error as exc:
        raise FormatError(f"record {record.name} does not inflate: {exc}", path=record.path) from None
    if len(out) != storage.nbytes or inflater.unconsumed_tail:
        raise LimitError(f"record {record.name} does not inflate to {storage.nbytes} bytes", path=record.path)
    return out


def chunks(span: ByteRange, size: int = CHUNK) -> Iterator[bytes]:
    with open(span.path, "rb") as f:
        done = 0
        while done < span.size:
            block = os.pread(f.fileno(), min(size, span.size - done), span.offset + done)
            if not block:
                raise FormatError(f"file ends at byte {span.offset + done}", path=span.path)
            yield block
            done += len(block)


def copy_range(span: ByteRange, out: BinaryIO) -> None:
    """Append `span` to `out`, file to file in the kernel where the filesystem allows."""
    out.flush()
    with open(span.path, "rb") as src:
        _kernel_copy(src.fileno(), span.offset, out.fileno(), span.size)
    out.seek(0, os.SEEK_END)


def copy_range_crc(span: ByteRange, out: BinaryIO) -> int:
    """Append `span` to `out` through memory, returning its CRC-32 (zip records need one)."""
    crc = 0
    for block in chunks(span):
        crc = zlib.crc32(block, crc)
        out.write(block)
    return crc


def _kernel_copy(src: int, offset: int, dst: int, size: int) -> None:
    position = os.lseek(dst, 0, os.SEEK_END)
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done, offset + done, position + done)
            if n == 0:
                raise FormatError("source ended during a copy")
            done += n
    except OSError:  # filesystems without copy_file_range: copy through a buffer
        while done < size:
            block = os.pread(src, min(CHUNK, size - done), offset + done)
            if not block:
                raise FormatError("source ended during a copy") from None
            os.pwrite(dst, block, position + done)
            done += len(block)


def same_bytes(a: ByteRange, b: ByteRange) -> bool:
    if a.size != b.size:
        return False
    return all(x == y for x, y in zip(chunks(a), chunks(b), strict=True))


def range_equals(span: ByteRange, expected: bytes | bytearray | memoryview) -> bool:
    if span.size != len(expected):
        return False
    view, done = memoryview(expected), 0
    for block in chunks(span):
        if view[done : done + len(block)] != block:
            return False
        done += len(block)
    return True


# -- torch ----------------------------------------------------------------------------------


def torch_dtype(name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise FormatError(f"dtype {name} has no torch equivalent")
    return dtype


def load_tensor(tensor: TensorRef) -> torch.Tensor:
    """The tensor as torch would load it (on cpu), from only the bytes its view needs."""
    import torch

    if tensor.layout != "strided":
        raise FormatError(f"{tensor.layout} tensors cannot be read as dense tensors")
    if tensor.numel == 0:
        return torch.empty(tensor.shape, dtype=torch_dtype(tensor.dtype))
    data, first = read_span(tensor)
    flat = torch.frombuffer(data, dtype=torch.uint8)
    storage = tensor.storage
    assert storage is not None
    # torch swaps by the storage's element size (each half of a complex number on its
    # own); untyped storages (uint8) are never swapped.
    if storage.byteorder != "little" and storage.itemsize > 1:
        unit = storage.itemsize // 2 if DTYPES[storage.dtype].kind == "complex" else storage.itemsize
        flat = flat.view(-1, unit).flip(1).reshape(-1)
    values = flat.view(torch_dtype(tensor.dtype))
    return values.as_strided(tensor.shape, tensor.stride, tensor.offset - first)


def tensor_bytes(value: torch.Tensor) -> memoryview:
    """The little-endian bytes of a contiguous copy of `value`."""
    import torch

    contiguous = value.contiguous()
    if contiguous.numel() == 0:
        return memoryview(b"")
    return contiguous.reshape(-1).view(torch.uint8).numpy().data


def cast(value: torch.Tensor, dtype: str | None) -> torch.Tensor:
    if dtype is None or str(value.dtype).removeprefix("torch.") == dtype:
        return value
    return value.to(torch_dtype(dtype))
