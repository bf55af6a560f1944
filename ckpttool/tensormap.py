"""Tensor elements as numpy arrays, straight from memory-mapped files, block by block.

For reading every byte of two large files (`diff`): a tensor whose bytes lie in its file
as they are (contiguous, little-endian, stored uncompressed) is handed out as numpy views
of a read-only map of that file, with no copy; any other tensor (a strided view, a
big-endian or compressed record) as a contiguous copy read through `tensordata`.

Memory stays bounded however large the files are: the pages of each block are released
from this process's map once the next block is asked for (they stay in the page cache;
mapped pages would otherwise count towards the process's resident size until the end).

Damage is never passed on, as in `tensordata`: a zip record with a CRC-32 is checked
before the last block of a tensor is handed out - over the mapped blocks themselves
when the tensor is the whole record, in a pass of its own first when it views part of
it - and each record once.

torch is not imported: numpy reads every dtype here, bfloat16, float8 and complex32
as their raw bits (uint16, uint8 and float16 pairs), widened by the caller.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from collections.abc import Callable, Iterator
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING

from ckpttool.checkpoint import TensorRef
from ckpttool.crc import Crc32
from ckpttool.dtypes import DTYPES
from ckpttool.errors import FormatError
from ckpttool.tensordata import (
    ByteRange,
    check_crc,
    check_overlap,
    direct_range,
    needs_crc_check,
    read_span,
    verify_record,
)

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import DTypeLike

BLOCK_BYTES = 4 << 20  # when the caller does not say
FAULT_AROUND_SLACK = 1 << 20  # Linux maps up to 64 KiB around a faulting page by default

# numpy's name for the bits of each dtype; "raw" ones are widened by the caller
_RAW: dict[str, DTypeLike] = {
    "float64": "f8", "float32": "f4", "float16": "f2", "bfloat16": "u2", "complex128": "c16", "complex64": "c8",
    "complex32": ("f2", (2,)), "int64": "i8", "int32": "i4", "int16": "i2", "int8": "i1",
    "uint64": "u8", "uint32": "u4", "uint16": "u2", "uint8": "u1", "bool": "?",
    "float8_e4m3fn": "u1", "float8_e4m3fnuz": "u1", "float8_e5m2": "u1", "float8_e5m2fnuz": "u1",
    "float8_e8m0fnu": "u1",
}  # fmt: skip


def readable(dtype: str) -> bool:
    """Whether this module hands out elements of `dtype` (quantized and packed types: no)."""
    return dtype in _RAW


def raw_dtype(dtype: str) -> np.dtype:
    import numpy as np

    raw: np.dtype = np.dtype(_RAW[dtype])
    return raw.newbyteorder("<")


class MappedFiles:
    """Read-only maps of whole files, each opened once and all closed together."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}

    def __enter__(self) -> MappedFiles:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def map(self, path: str) -> mmap.mmap:
        if path not in self._maps:
            with open(path, "rb") as f:
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[path]

    def release(self, path: str, start: int, end: int) -> None:
        """Drop the pages of bytes [start, end) from this process (not from the page cache),
        and those just before: a page fault maps its neighbours too (fault-around), some of
        them before a block that starts where the last one was already released."""
        m = self._maps.get(path)
        if m is None or not hasattr(m, "madvise"):
            return
        start = max(0, start - FAULT_AROUND_SLACK)
        first = start - start % mmap.PAGESIZE
        last = min(len(m), end + (-end) % mmap.PAGESIZE)
        if last > first:
            m.madvise(mmap.MADV_DONTNEED, first, last - first)

    def close(self) -> None:
        for m in self._maps.values():
            try:
                m.close()
            except BufferError:  # an array still views it (an error is unwinding): let it go with that
                pass
        self._maps.clear()


def element_blocks(tensor: TensorRef, files: MappedFiles, elements: int | None = None) -> Iterator[np.ndarray]:
    """The tensor's elements in row-major order as 1-D raw arrays (`raw_dtype`) of at most
    `elements` each; read-only views of the map where the bytes allow."""

    dtype = raw_dtype(tensor.dtype)
    step = elements or max(1, BLOCK_BYTES // dtype.itemsize)
    if tensor.numel == 0:
        return
    span = direct_range(tensor)
    if span is None:
        copy = _contiguous_copy(tensor, dtype)
        for start in range(0, len(copy), step):
            yield copy[start : start + step]
        return
    yield from _mapped_blocks(span, dtype, tensor.numel, step, files)


def _mapped_blocks(span: ByteRange, dtype: np.dtype, count: int, step: int, files: MappedFiles) -> Iterator[np.ndarray]:
    """`count` elements at `span` as views of the file's map; the pages of each block are
    released once the caller asks for the next, and the record's CRC-32 checked on the way."""
    import numpy as np

    whole_record = _is_whole_record(span)
    if span.record is not None and not whole_record:
        verify_record(span.record)  # part of a record: checked in a pass of its own first
    buffer = files.map(span.path)
    if span.offset + span.size > len(buffer):
        raise FormatError(f"file ends inside a storage record (byte {len(buffer)})", path=span.path)
    streamed = span.record if whole_record else None
    crc = Crc32()  # just before the caller compares a block: its bytes are then in cache
    for first in range(0, count, step):
        n = min(step, count - first)
        start = span.offset + first * dtype.itemsize
        block = np.frombuffer(buffer, dtype, n, start)
        if streamed is not None:
            crc.add(block.data)
            if first + n == count:  # the last block waits for the record's check
                check_crc(streamed, crc.value)
        yield block
        del block
        files.release(span.path, start, start + n * dtype.itemsize)


def _is_whole_record(span: ByteRange) -> bool:
    record = span.record
    if record is None or not needs_crc_check(record):
        return False
    return (span.offset, span.size) == (record.data_offset(), record.size)


def _contiguous_copy(tensor: TensorRef, dtype: np.dtype) -> np.ndarray:
    """A strided, offset, byte-swapped or compressed tensor read whole, as torch would load it."""
    import numpy as np
    from numpy.lib.stride_tricks import as_strided

    storage = tensor.storage
    data, first = read_span(tensor)  # checks the record's CRC-32
    assert storage is not None
    if storage.byteorder != "little" and storage.itemsize > 1:
        # torch swaps by the storage's element: the tensor's own when they share a dtype
        if storage.itemsize != DTYPES[tensor.dtype].itemsize:
            raise FormatError(f"{tensor.dtype} tensor over a big-endian {storage.dtype} storage cannot be read")
        dtype = dtype.newbyteorder(">")
    flat = np.frombuffer(data, dtype)
    check_overlap(tensor)
    strides = tuple(s * dtype.itemsize for s in tensor.stride)
    view = as_strided(flat[tensor.offset - first :], tensor.shape, strides, writeable=False)
    return np.ascontiguousarray(view).reshape(-1).astype(dtype.newbyteorder("<"), copy=False)


# -- equal bytes ------------------------------------------------------------------------------


@cache
def _memcmp() -> Callable[[int, int, int], int] | None:
    """libc's memcmp (tens of GB/s; numpy's comparison allocates and runs at a tenth of it)."""
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).memcmp
    except (OSError, AttributeError, TypeError):  # no C library by that name (Windows: no "c")
        return None
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return function


def same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether two contiguous arrays hold the same bytes."""
    if x.nbytes != y.nbytes:
        return False
    memcmp = _memcmp()
    if memcmp is None or x.nbytes == 0:
        import numpy as np

        return bool(np.array_equal(x.view(np.uint8), y.view(np.uint8)))
    return int(memcmp(x.ctypes.data, y.ctypes.data, x.nbytes)) == 0
