"""Writing torch's zip container: stored records whose data starts 64-byte aligned.

Alignment is what lets `torch.load(mmap=True)` map storages in place; like torch's
writer we pad with an `FB` extra field in the local header. Records can come from
memory or be streamed from another file; a streamed record's CRC-32 is either known
(copied from a source record) or computed on the way and patched into its local
header afterwards. Zip64 fields appear only where sizes or offsets need them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from ckpttool.crc import crc32 as crc32_of
from ckpttool.tensordata import ByteRange, copy_range, crc32

ALIGNMENT = 64
_U32 = 0xFFFFFFFF
_U16 = 0xFFFF
_FLAGS = 0x0800  # names are UTF-8
_DOS_TIME, _DOS_DATE = 0, (0 << 9) | (1 << 5) | 1  # 1980-01-01, so output is reproducible


@dataclass
class _Entry:
    name: bytes
    offset: int
    size: int
    crc: int


class ZipWriter:
    def __init__(self, out: BinaryIO, root: str) -> None:
        self.out = out
        self.root = root
        self.entries: list[_Entry] = []

    def write_bytes(self, name: str, data: bytes | bytearray | memoryview) -> None:
        entry = self._start(name, len(data), crc32_of(data) & _U32)
        self.out.write(data)
        self.entries.append(entry)

    def write_range(self, name: str, span: ByteRange, crc: int | None = None) -> None:
        """A record streamed from another file; `crc` when the source already knows it."""
        entry = self._start(name, span.size, crc or 0)
        if crc is None:
            entry.crc = crc32(span, self.out)
            self._patch_crc(entry)
        else:
            copy_range(span, self.out)
        self.entries.append(entry)

    def close(self) -> None:
        directory_offset = self.out.tell()
        for entry in self.entries:
            self.out.write(_central_header(entry))
        directory_size = self.out.tell() - directory_offset
        self.out.write(_end_records(len(self.entries), directory_offset, directory_size))

    # -- headers ------------------------------------------------------------------------------

    def _start(self, name: str, size: int, crc: int) -> _Entry:
        full = f"{self.root}/{name}".encode()
        offset = self.out.tell()
        zip64 = size >= _U32
        extra = struct.pack("<2H2Q", 1, 16, size, size) if zip64 else b""
        header_size = 30 + len(full) + len(extra) + 4  # 4: the padding field's own header
        padding = -(offset + header_size) % ALIGNMENT
        extra += struct.pack("<2H", 0x4246, padding) + b"\0" * padding  # "FB" padding field
        small = _U32 if zip64 else size
        self.out.write(
            struct.pack(
                "<4s5H3L2H", b"PK\x03\x04", 45 if zip64 else 20, _FLAGS, 0, _DOS_TIME, _DOS_DATE,
                crc, small, small, len(full), len(extra),
            )
            + full
            + extra
        )  # fmt: skip
        return _Entry(full, offset, size, crc)

    def _patch_crc(self, entry: _Entry) -> None:
        end = self.out.tell()
        self.out.seek(entry.offset + 14)
        self.out.write(struct.pack("<L", entry.crc))
        self.out.seek(end)


def _central_header(entry: _Entry) -> bytes:
    values: list[int] = []
    size = entry.size
    if size >= _U32:
        values += [size, size]
    offset = entry.offset
    if offset >= _U32:
        values.append(offset)
    extra = struct.pack(f"<2H{len(values)}Q", 1, 8 * len(values), *values) if values else b""
    return (
        struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 45, 45 if extra else 20, _FLAGS, 0, _DOS_TIME, _DOS_DATE,
            entry.crc, min(size, _U32), min(size, _U32), len(entry.name), len(extra), 0, 0, 0, 0,
            min(offset, _U32),
        )
        + entry.name
        + extra
    )  # fmt: skip


def _end_records(count: int, offset: int, size: int) -> bytes:
    records = b""
    if count >= _U16 or offset >= _U32 or size >= _U32:
        zip64_at = offset + size
        records += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, offset)
        records += struct.pack("<4sLQL", b"PK\x06\x07", 0, zip64_at, 1)
    return records + struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, min(count, _U16), min(count, _U16), min(size, _U32), min(offset, _U32), 0
    )
