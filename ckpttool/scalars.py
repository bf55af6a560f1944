"""Reading the value of a one-element tensor straight from the file (a saved loss, a step)."""

from __future__ import annotations

import struct

from ckpttool.checkpoint import TensorRef
from ckpttool.formats.ziparchive import pread_exact

_STRUCT_CODES = {
    "float64": "d", "float32": "f", "float16": "e", "int64": "q", "int32": "i", "int16": "h",
    "int8": "b", "uint8": "B", "uint16": "H", "uint32": "I", "uint64": "Q", "bool": "?",
}  # fmt: skip


def read_scalar(tensor: TensorRef) -> int | float | bool | None:
    """The single element of `tensor`, or None where the dtype or record does not allow it."""
    storage = tensor.storage
    if storage is None or storage.record is None or storage.record.compressed or tensor.numel != 1:
        return None
    if storage.record.gather is not None:
        return None
    code = "H" if tensor.dtype == "bfloat16" else _STRUCT_CODES.get(tensor.dtype)
    if code is None:
        return None
    record = storage.record
    start = record.data_offset() + tensor.offset * tensor.itemsize
    with open(record.path, "rb") as f:
        raw = pread_exact(f.fileno(), start, tensor.itemsize)
    if len(raw) != tensor.itemsize:
        return None
    endian = "<" if storage.byteorder == "little" else ">"
    value: int | float | bool = struct.unpack(endian + code, raw)[0]
    if tensor.dtype == "bfloat16":  # the upper half of a float32
        value = struct.unpack("<f", struct.pack("<I", int(value) << 16))[0]
    return value
