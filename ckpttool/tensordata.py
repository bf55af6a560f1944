"""Access to tensor bytes: byte ranges in the file, streamed; torch tensors on demand.

A tensor's bytes are read from its storage's record, only the span the view
touches, honouring storage offset, stride and byteorder. Nothing maps or holds the
whole file: a read allocates at most one tensor's span, copies and comparisons go
through fixed-size chunks, and contiguous tensors are copied file to file by the
kernel. torch is imported only by the functions that build torch tensors.

Damage is never passed on: bytes of a zip record whose archive recorded a CRC-32
are checked against it before they are handed out whole — as they stream when a
read covers the whole record, in one pass over the record first when it covers
part of it — and each record is checked once per read checkpoint. A mismatch is an
IntegrityError naming the file, the record and the tensors that view it. (torch
itself does not check: `torch.load` returns the changed values.) Kernel copies
(`copy_range`) do not see the bytes; their callers verify what they copied before
keeping it (the copy's CRC-32 against the record's, `copy_matches_record`, which needs no
second read of the source; `verify_tensor`; or reading the source back through `chunks`).
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from ckpttool.checkpoint import Record, Storage, TensorRef
from ckpttool.crc import Crc32
from ckpttool.crc import crc32 as crc32_of
from ckpttool.dtypes import DTYPES
from ckpttool.errors import FormatError, IntegrityError, LimitError

if TYPE_CHECKING:
    import torch

CHUNK = 16 << 20


@dataclass(frozen=True)
class ByteRange:
    """`size` bytes at `offset` of the file `path`."""

    path: str
    offset: int
    size: int
    record: Record | None = field(default=None, compare=False)  # the record the bytes lie in


def direct_range(tensor: TensorRef) -> ByteRange | None:
    """The tensor's bytes as one range of its file, when they can be used as they are:
    contiguous, little-endian (or single-byte), stored uncompressed."""
    storage = tensor.storage
    if storage is None or storage.record is None or storage.record.compressed or storage.record.gather:
        return None
    if not tensor.is_contiguous() or tensor.layout != "strided":
        return None
    if storage.byteorder != "little" and storage.itemsize > 1:  # swapped on load, as torch does
        return None
    start = storage.record.data_offset() + tensor.offset * tensor.itemsize
    return ByteRange(storage.record.path, start, tensor.nbytes, storage.record)


def direct_ranges(tensor: TensorRef) -> list[ByteRange] | None:
    """`direct_range`, or for a whole gathered tensor whose parts are plain ranges, those."""
    single = direct_range(tensor)
    if single is not None:
        return [single]
    storage = tensor.storage
    record = storage.record if storage is not None else None
    if record is None or record.parts is None or not tensor.is_contiguous() or tensor.layout != "strided":
        return None
    if storage is None or tensor.offset or tensor.nbytes != storage.nbytes:
        return None
    parts: list[ByteRange] | None = record.parts()
    return parts


def read_span(tensor: TensorRef) -> tuple[bytearray, int]:
    """The bytes of the storage span the tensor views, and the span's first element."""
    storage = tensor.storage
    if storage is None or storage.record is None:
        raise FormatError(f"tensor on {tensor.device} has no data in the file")
    first_byte, end_byte = tensor.byte_span()
    record = storage.record
    if record.gather is not None:
        gathered: bytearray = record.gather()
        whole_span = first_byte == 0 and end_byte == len(gathered)
        return (gathered if whole_span else gathered[first_byte:end_byte]), tensor.offset
    if record.compressed:
        return bytearray(inflate_storage(storage)[first_byte:end_byte]), tensor.offset
    whole = first_byte == 0 and end_byte == record.size
    if not whole:
        verify_record(record)
    data = read_range(ByteRange(record.path, record.data_offset() + first_byte, end_byte - first_byte))
    if whole and _unchecked(record):
        _check(record, crc32_of(data))
    return data, tensor.offset


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
    if _unchecked(record):
        _check(record, crc32_of(out))  # a zip CRC-32 is of the inflated bytes
    return out


def chunks(span: ByteRange, size: int = CHUNK) -> Iterator[bytes]:
    """The span's bytes, block by block. When they lie in a zip record with a CRC-32, the
    whole record is checked before the last block is handed out: as the blocks stream
    when the span is the record, in a pass of its own first when it is part of it."""
    record = span.record
    if record is None or not _unchecked(record):
        yield from _blocks(span, size)
        return
    if (span.offset, span.size) != (record.data_offset(), record.size):
        verify_record(record)
        yield from _blocks(span, size)
        return
    crc = Crc32()
    last: bytes | None = None
    for block in crc.over(_blocks(span, size)):
        if last is not None:
            yield last
        last = block
    _check(record, crc.value)
    if last is not None:
        yield last


def _blocks(span: ByteRange, size: int = CHUNK) -> Iterator[bytes]:
    with open(span.path, "rb") as f:
        done = 0
        while done < span.size:
            block = os.pread(f.fileno(), min(size, span.size - done), span.offset + done)
            if not block:
                raise FormatError(f"file ends at byte {span.offset + done}", path=span.path)
            yield block
            done += len(block)


def crc32(span: ByteRange, out: BinaryIO | None = None, value: int = 0) -> int:
    """The CRC-32 of the bytes as they are (no record check), each block also appended to
    `out` when given: how zip records are written, copied and checked. `value` continues
    the CRC-32 of bytes before them."""
    crc = Crc32(value)
    for block in _reused_blocks(span):
        crc.add(block)
        if out is not None:
            out.write(block)
    return crc.value


def _reused_blocks(span: ByteRange) -> Iterator[memoryview]:
    """The span's bytes block by block, read into one buffer that each block overwrites
    (no allocation per block): for callers done with a block before they ask for the next."""
    buffer = memoryview(bytearray(min(CHUNK, span.size)))
    with open(span.path, "rb") as f:
        done = 0
        while done < span.size:
            n = os.preadv(f.fileno(), [buffer[: min(CHUNK, span.size - done)]], span.offset + done)
            if n == 0:
                raise FormatError(f"file ends at byte {span.offset + done}", path=span.path)
            yield buffer[:n]
            done += n


def recorded_crc(span: ByteRange) -> int | None:
    """The CRC-32 the file records for exactly these bytes: the span is a whole stored zip
    record that has one. None for a part of a record, and for formats without CRCs."""
    record = span.record
    if record is None or not record.crc or record.compressed or record.gather is not None:
        return None
    if (span.offset, span.size) != (record.data_offset(), record.size):
        return None
    return record.crc


def copy_matches_record(source: ByteRange, copy: ByteRange) -> bool:
    """Whether `copy` holds the bytes of `source`, told by one CRC-32 pass over `copy` alone:
    when `source` is a whole zip record with a recorded CRC-32, equal values vouch for the
    copy and for the record (now marked checked). False means "not shown": compare them."""
    expected = recorded_crc(source)
    if expected is None or source.size != copy.size:
        return False
    if crc32(copy) & 0xFFFFFFFF != expected:
        return False  # the comparison then says which side is damaged
    assert source.record is not None  # it recorded the CRC
    source.record.verified = True
    return True


# -- record checks --------------------------------------------------------------------------------


def _unchecked(record: Record) -> bool:
    """A CRC-32 to check that has not been: torch writes 0 when CRC computation is off
    (an empty record's CRC is 0 as well, and holds nothing to check)."""
    return bool(record.crc) and not record.verified


def _check(record: Record, crc: int) -> None:
    if crc & 0xFFFFFFFF != record.crc:
        raise crc_mismatch(record)
    record.verified = True


def needs_crc_check(record: Record) -> bool:
    """For readers that see a record's bytes by other means (`tensormap`'s maps): whether
    they still have to compute its CRC-32 and hand it to `check_crc`."""
    return _unchecked(record)


def check_crc(record: Record, crc: int) -> None:
    """Refuse the record (IntegrityError) unless `crc`, computed over all of its stored bytes,
    is the one recorded; remember that it passed."""
    _check(record, crc)


def verify_record(record: Record) -> None:
    """Read a stored record whole, once, and refuse it if it fails its CRC-32 (a compressed
    one is checked as it is inflated, against the size its storage declares)."""
    if _unchecked(record) and not record.compressed:
        _check(record, crc32(ByteRange(record.path, record.data_offset(), record.size)))


def verify_storage(storage: Storage) -> None:
    """The storage's record holds its CRC-32 (callers of kernel copies make sure of it
    before they keep what they copied; `check` asks it of every record)."""
    if storage.record is not None and storage.record.gather is not None:
        parts = storage.record.parts() if storage.record.parts is not None else None
        if parts is not None:  # checked part by part, each record once
            for part in parts:
                if part.record is not None:
                    verify_record(part.record)
        elif not storage.record.verified:  # a gathering that checked its parts may say so
            storage.record.gather()  # each part is checked as it is read
        return
    if storage.record is None or not _unchecked(storage.record):
        return
    if storage.record.compressed:
        inflate_storage(storage)
    else:
        verify_record(storage.record)


def verify_tensor(tensor: TensorRef) -> None:
    if tensor.storage is not None:
        verify_storage(tensor.storage)


def crc_mismatch(record: Record) -> IntegrityError:
    keys: list[str] = record.viewed_by() if record.viewed_by is not None else []
    shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    viewers = f"tensor{'s' if len(keys) > 1 else ''} {shown}" if keys else "no tensor"
    return IntegrityError(
        f"record {record.name} fails its CRC-32 check (its bytes changed after saving); it holds {viewers}",
        path=record.path,
    )


def copy_range(span: ByteRange, out: BinaryIO) -> None:
    """Append `span` to `out`, file to file in the kernel where the filesystem allows."""
    out.flush()
    with open(span.path, "rb") as src:
        _kernel_copy(src.fileno(), span.offset, out.fileno(), span.size)
    out.seek(0, os.SEEK_END)


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
    check_overlap(tensor)
    return values.as_strided(tensor.shape, tensor.stride, tensor.offset - first)


MAX_OVERLAPPING = 1 << 28  # elements a view with overlapping strides may read (a few seconds)


def check_overlap(tensor: TensorRef) -> None:
    """A view whose strides overlap (torch accepts any that stays inside its storage) reads
    its stored elements many times over: a 256 KiB record can declare 2**30 of them, which
    every reader of values (stats, diff, convert) would walk or copy whole. Repeats along
    stride-0 dimensions (an expansion) are left to the readers, which count them. Past
    `MAX_OVERLAPPING` elements, a LimitError."""
    kept = [(n, abs(s)) for n, s in zip(tensor.shape, tensor.stride, strict=True) if s != 0 or n <= 1]
    if any(n == 0 for n, _ in kept):
        return
    elements = math.prod(n for n, _ in kept)
    span = 1 + sum((n - 1) * s for n, s in kept)
    if elements > max(span, MAX_OVERLAPPING):
        record = tensor.storage.record if tensor.storage is not None else None
        raise LimitError(
            f"a view of {elements} elements over {span} stored ones (overlapping strides): too many to read",
            path=record.path if record is not None else None,
        )


@contextmanager
def allocating() -> Iterator[None]:
    """torch's allocator reports a failed allocation as a RuntimeError: as Python's own
    MemoryError (out of memory, one line), not a bug. A tiny file can declare a view that
    copies to terabytes (a stride-0 expansion)."""
    try:
        yield
    except RuntimeError as exc:
        if "can't allocate memory" in str(exc):
            raise MemoryError(str(exc)) from None
        raise


def tensor_bytes(value: torch.Tensor) -> memoryview:
    """The little-endian bytes of a contiguous copy of `value`."""
    import torch

    with allocating():
        contiguous = value.contiguous()
    if contiguous.numel() == 0:
        return memoryview(b"")
    return contiguous.reshape(-1).view(torch.uint8).numpy().data


def cast(value: torch.Tensor, dtype: str | None) -> torch.Tensor:
    if dtype is None or str(value.dtype).removeprefix("torch.") == dtype:
        return value
    with allocating():
        return value.to(torch_dtype(dtype))
