"""The zip container of torch checkpoints, read the way torch's own reader does.

torch (through miniz) finds records by their central-directory names and reaches the
data through each local header's lengths. We do the same, without Python's
`zipfile`, which refuses some archives torch accepts and accepts some torch refuses
(that difference is how pickle scanners have been bypassed). Everything unusual is
kept as an anomaly for `scan` and `check` to report: local names that differ from
the central directory, encryption or patch flags, records outside the file, entries
under more than one root folder.

Only the central directory is read up front; a record's bytes are read on request,
stored records by offset, DEFLATE ones through a decompressor capped at the size
the caller expects.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import IO, Any

from ckpttool.checkpoint import Record
from ckpttool.crc import crc32 as crc32_of
from ckpttool.errors import CkptError, EncryptedError, LimitError, ZipFormatError

ZIP_MAGIC = b"PK\x03\x04"
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_LOCAL = struct.Struct("<4s5H3L2H")
_MAX_EOCD_SEARCH = 22 + 0xFFFF
_SATURATED = (0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)  # a plain end record's "see the zip64 record"
STORED, DEFLATED = 0, 8
_FLAG_ENCRYPTED = 0x1
_FLAG_PATCHED = 0x20
_FLAG_STRONG_ENCRYPTION = 0x40
# An external attribute's MS-DOS folder bit: miniz (torch's reader) takes such a record for a
# folder whatever its name, and extracting it writes nothing into the buffer torch allocated.
_DOS_DIRECTORY = 0x10
_FOLDER_READ = "torch's reader takes it for a folder and reads none of its bytes (torch gets what its buffer held)"
# miniz compares names as bytes with ASCII letters folded (MZ_TOLOWER): torch's lookups
# (`get_record`, `has_record`) are case-insensitive
_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def folded(name: str) -> str:
    """A record name as miniz compares it: its ASCII letters in lower case."""
    return name.lower() if name.isascii() else name.translate(_ASCII_FOLD)  # lower(): 17x faster (50k names)


@dataclass(slots=True)
class ZipEntry:
    """One central-directory record."""

    name: str
    method: int
    flags: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int
    data_offset: int = -1  # resolved from the local header on first use
    directory: bool = False  # flagged as a folder by its MS-DOS attribute: miniz reads none of its bytes


@dataclass
class ZipArchive:
    path: str
    file_size: int
    entries: dict[str, ZipEntry]
    order: list[str]
    anomalies: list[str] = field(default_factory=list)
    # each pickle record's inert decoding, by record name: decoded once however many ask
    decoded: dict[str, Any] = field(default_factory=dict)
    by_folded: dict[str, str] = field(default_factory=dict)  # `folded` name -> the first record so named
    folded_order: list[str] = field(default_factory=list)  # each name of `order`, `folded` (once per record)

    @cached_property  # asked once per storage: 10^5 times for some files
    def root(self) -> str:
        """The folder torch reads records from: the first entry's top-level folder."""
        first = self.order[0]
        return first.split("/", 1)[0] if "/" in first else ""

    def record(self, name: str) -> ZipEntry | None:
        """The entry `<root>/<name>`, as torch's `get_record(name)` finds it: whatever the
        case of its letters (`archive/DATA.PKL` is torch's data.pkl)."""
        entry = self.entries.get(f"{self.root}/{name}")
        if entry is None:
            found = self.by_folded.get(folded(f"{self.root}/{name}"))
            entry = self.entries[found] if found is not None else None
        return entry

    def folded_names(self) -> Iterator[tuple[str, str]]:
        """Each record's name with its `folded` form (as torch's reader matches names), in order."""
        return zip(self.order, self.folded_order, strict=True)

    def roots(self) -> list[str]:
        return sorted({n.split("/", 1)[0] for n in self.order if "/" in n})


def is_zip(head: bytes) -> bool:
    return head[:4] == ZIP_MAGIC


def open_archive(path: str, start: int = 0, end: int | None = None) -> ZipArchive:
    """Read the central directory of `path`; raise ZipFormatError when there is none.

    `start`/`end` read a zip embedded in a larger file (DCP's `.distcp` files hold one
    `torch.save` archive per item): its own offsets count from `start`, and every offset
    kept here (headers, data, `file_size` as the archive's end) is one of the whole file."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        end = size if end is None else end
        if not 0 <= start <= end <= size:
            raise ZipFormatError(f"zip archive at bytes [{start}, {end}) lies outside the file", path=path)
        disagree: list[str] = []
        count, cd_offset, cd_size = _find_central_directory(f, start, end, path, disagree)
        f.seek(start + cd_offset)
        directory = f.read(cd_size)
    if len(directory) != cd_size:
        raise ZipFormatError("central directory runs past the end of the file", path=path)
    archive = ZipArchive(path, end, {}, [], disagree)
    _parse_central_directory(directory, count, archive, start)
    if not archive.order:
        raise ZipFormatError("zip archive holds no records", path=path)
    _refuse_encrypted(archive)
    return archive


_MAX_PLAIN_CHECK = 256 << 20


def _refuse_encrypted(archive: ZipArchive) -> None:
    """A record flagged as encrypted whose bytes are not its plain content is encrypted:
    torch refuses the file and no scan can see inside, so it is unreadable. A flag set on
    plain bytes (to make other readers give up) stays an anomaly of a readable file."""
    for entry in archive.entries.values():
        if entry.flags & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION) and not _reads_as_plain(archive, entry):
            raise EncryptedError(f"record {entry.name!r} is encrypted: cannot be scanned", path=archive.path)


def _reads_as_plain(archive: ZipArchive, entry: ZipEntry) -> bool:
    if entry.size > _MAX_PLAIN_CHECK:
        return True  # too large to tell: its flag stays an anomaly (the scan fails closed)
    try:  # a CRC of 0 is "none recorded" (torch with CRC computation off): cannot tell
        return entry.crc == 0 or crc_matches(entry, read_entry(archive, entry, entry.size))
    except CkptError:
        return False


def _find_central_directory(f: IO[bytes], start: int, end: int, path: str, disagree: list[str]) -> tuple[int, int, int]:
    """(entry count, directory offset from `start`, directory size), found as miniz (torch's
    reader) finds them: the last end record with room for itself before the end of the file,
    and a zip64 end record wherever a zip64 locator just before it points (used whenever it
    is there, as miniz and Python's zipfile do, whatever the plain record says; where the
    two disagree, `disagree` says so)."""
    size = end - start
    tail_start = start + max(0, size - _MAX_EOCD_SEARCH)
    f.seek(tail_start)
    tail = f.read(end - tail_start)
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0 and at + _EOCD.size > len(tail):  # a signature too close to the end: look further back
        at = tail.rfind(b"PK\x05\x06", 0, at + 3)
    if at < 0:
        raise ZipFormatError("zip end-of-central-directory record not found (file truncated?)", path=path)
    _, disk, cd_disk, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    zip64 = _zip64_directory(f, start, size, tail_start - start + at, path)
    if zip64 is not None:
        plain = (count, cd_offset, cd_size)
        count, cd_offset, cd_size = zip64
        if any(p not in (z, full) for p, z, full in zip(plain, zip64, _SATURATED, strict=True)):
            # readers that take the zip64 record only when the plain one is saturated read another directory
            disagree.append("the zip64 end record names another central directory than the plain end record")
    elif disk != 0 or cd_disk != 0:
        raise ZipFormatError("multi-disk zip archives are not supported", path=path)
    elif count == 0xFFFF or 0xFFFFFFFF in (cd_size, cd_offset):
        raise ZipFormatError("zip64 end-of-central-directory record missing", path=path)
    if cd_offset + cd_size > size:
        raise ZipFormatError("central directory lies outside the file (truncated?)", path=path)
    return count, cd_offset, cd_size


def _zip64_directory(f: IO[bytes], start: int, size: int, eocd_at: int, path: str) -> tuple[int, int, int] | None:
    """The zip64 end record the locator before the end record at `eocd_at` points to (offsets
    from `start`), or None when there is no locator or no record where it points."""
    loc_at = eocd_at - _EOCD64_LOCATOR.size
    if loc_at < 0:
        return None
    f.seek(start + loc_at)
    locator = f.read(_EOCD64_LOCATOR.size)
    if len(locator) < _EOCD64_LOCATOR.size or locator[:4] != b"PK\x06\x07":
        return None
    rec_at = _EOCD64_LOCATOR.unpack(locator)[2]
    if rec_at > size - _EOCD64.size:
        raise ZipFormatError("zip64 end-of-central-directory record lies outside the file", path=path)
    f.seek(start + rec_at)
    record = f.read(_EOCD64.size)
    if len(record) < _EOCD64.size or record[:4] != b"PK\x06\x06":
        return None
    fields = _EOCD64.unpack(record)
    if fields[4] != 0 or fields[5] != 0:
        raise ZipFormatError("multi-disk zip archives are not supported", path=path)
    count, cd_size, cd_offset = fields[7], fields[8], fields[9]
    return count, cd_offset, cd_size


def _parse_central_directory(directory: bytes, count: int, archive: ZipArchive, start: int = 0) -> None:
    pos = 0
    unpack = _CENTRAL.unpack_from
    for _ in range(count):
        if directory[pos : pos + 4] != b"PK\x01\x02":
            raise ZipFormatError("corrupt central directory entry", path=archive.path)
        (
            _,
            _,
            _,
            flags,
            method,
            _,
            _,
            crc,
            csize,
            usize,
            name_len,
            extra_len,
            comment_len,
            _,
            _,
            attributes,
            header_offset,
        ) = unpack(directory, pos)
        name_at = pos + 46
        extra_at = name_at + name_len
        pos = extra_at + extra_len + comment_len
        if csize == 0xFFFFFFFF or usize == 0xFFFFFFFF or header_offset == 0xFFFFFFFF:
            extra = directory[extra_at : extra_at + extra_len]
            usize, csize, header_offset = _zip64_extra(extra, usize, csize, header_offset)
        name = directory[name_at:extra_at].decode("utf-8" if flags & 0x800 else "cp437", "replace")
        folder = bool(attributes & _DOS_DIRECTORY) and not name.endswith("/") and usize > 0
        _add_entry(archive, ZipEntry(name, method, flags, crc, csize, usize, start + header_offset, directory=folder))
    if pos > len(directory):
        raise ZipFormatError("central directory truncated", path=archive.path)


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<2H", extra, pos)
        if tag == 0x0001:
            values = iter(struct.unpack_from(f"<{size // 8}Q", extra, pos + 4))
            usize = next(values, usize) if usize == 0xFFFFFFFF else usize
            csize = next(values, csize) if csize == 0xFFFFFFFF else csize
            offset = next(values, offset) if offset == 0xFFFFFFFF else offset
            break
        pos += 4 + size
    return usize, csize, offset


def _add_entry(archive: ZipArchive, entry: ZipEntry) -> None:
    if entry.name in archive.entries:
        archive.anomalies.append(f"record {entry.name!r} appears twice; the first is used")
        return
    key = folded(entry.name)
    first = archive.by_folded.setdefault(key, entry.name)
    if first != entry.name:
        archive.anomalies.append(
            f"records {first!r} and {entry.name!r} differ only in letter case: "
            "torch's reader finds either by both names"
        )
    if entry.flags & (_FLAG_ENCRYPTED | _FLAG_PATCHED | _FLAG_STRONG_ENCRYPTION):
        archive.anomalies.append(
            f"record {entry.name!r} has encryption/patch flags 0x{entry.flags:04x} (torch refuses it)"
        )
    if entry.method not in (STORED, DEFLATED):
        archive.anomalies.append(f"record {entry.name!r} uses compression method {entry.method}")
    if entry.directory:
        archive.anomalies.append(f"record {entry.name!r} is flagged as a folder: {_FOLDER_READ}")
    if entry.header_offset + entry.compressed_size > archive.file_size:
        archive.anomalies.append(f"record {entry.name!r} lies outside the file")
    archive.entries[entry.name] = entry
    archive.order.append(entry.name)
    archive.folded_order.append(key)


def resolve_data_offset(archive: ZipArchive, entry: ZipEntry, f: IO[bytes] | None = None) -> int:
    """Offset of the record's bytes: after its local header, whose lengths miniz trusts."""
    if entry.data_offset >= 0:
        return entry.data_offset
    if entry.directory:
        raise ZipFormatError(f"record {entry.name!r} is flagged as a folder: {_FOLDER_READ}", path=archive.path)
    header = _pread(archive.path, entry.header_offset, _LOCAL.size, f)
    if len(header) < _LOCAL.size or header[:4] != ZIP_MAGIC:
        raise ZipFormatError(f"record {entry.name!r} has no local header", path=archive.path)
    local = _LOCAL.unpack(header)
    name_len, extra_len = local[9], local[10]
    local_name = _pread(archive.path, entry.header_offset + _LOCAL.size, name_len, f)
    if local_name.decode("utf-8", "replace") != entry.name:
        archive.anomalies.append(
            f"record {entry.name!r} is named {local_name.decode('utf-8', 'replace')!r} in its local header"
        )
    entry.data_offset = entry.header_offset + _LOCAL.size + name_len + extra_len
    if entry.data_offset + entry.compressed_size > archive.file_size:
        raise ZipFormatError(f"record {entry.name!r} runs past the end of the file", path=archive.path)
    return entry.data_offset


def read_entry(archive: ZipArchive, entry: ZipEntry, max_size: int, f: IO[bytes] | None = None) -> bytes:
    """The record's bytes, inflated if needed; never more than `max_size` bytes of output."""
    offset = resolve_data_offset(archive, entry, f)
    if entry.method == STORED:
        if entry.compressed_size > max_size:
            raise LimitError(f"record {entry.name!r} of {entry.compressed_size} bytes is too large", path=archive.path)
        return _pread(archive.path, offset, entry.compressed_size, f)
    if entry.method == DEFLATED:
        return _inflate(archive, entry, offset, max_size, f)
    raise ZipFormatError(f"record {entry.name!r} uses unsupported compression method {entry.method}", path=archive.path)


def _inflate(archive: ZipArchive, entry: ZipEntry, offset: int, max_size: int, f: IO[bytes] | None) -> bytes:
    raw = _pread(archive.path, offset, entry.compressed_size, f)
    inflater = zlib.decompressobj(-15)
    try:
        out = inflater.decompress(raw, max_size + 1)
    except zlib.error as exc:
        raise ZipFormatError(f"record {entry.name!r} does not inflate: {exc}", path=archive.path) from None
    if len(out) > max_size or inflater.unconsumed_tail:
        raise LimitError(f"compressed record {entry.name!r} expands beyond {max_size} bytes", path=archive.path)
    if len(out) != entry.size:
        raise ZipFormatError(
            f"record {entry.name!r} inflates to {len(out)} bytes, not the {entry.size} declared", path=archive.path
        )
    return out


def recorded_crc(entry: ZipEntry) -> int | None:
    """The CRC-32 the central directory vouches for, or None where it describes no plain
    bytes (encrypted or patched entries, which torch refuses anyway). 0 is kept: torch
    writes it when CRC computation is off, and readers take it as "none recorded"."""
    if entry.flags & (_FLAG_ENCRYPTED | _FLAG_PATCHED | _FLAG_STRONG_ENCRYPTION):
        return None
    return entry.crc


def crc_matches(entry: ZipEntry, data: bytes) -> bool:
    return crc32_of(data) & 0xFFFFFFFF == entry.crc


def _pread(path: str, offset: int, size: int, f: IO[bytes] | None) -> bytes:
    if f is not None:
        return pread_exact(f.fileno(), offset, size)
    with open(path, "rb") as handle:
        return pread_exact(handle.fileno(), offset, size)


def pread_exact(fd: int, offset: int, size: int) -> bytes:
    """Up to `size` bytes at `offset`; shorter only at the end of the file."""
    first = os.pread(fd, size, offset)
    if len(first) == size or not first:
        return first
    parts, got = [first], len(first)
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def entry_record(archive: ZipArchive, entry: ZipEntry) -> Record:
    """Where an entry's bytes are, for the readers of tensor data: located through its
    local header when first read, with the CRC-32 the central directory records."""
    return Record(
        path=archive.path,
        name=entry.name,
        offset=entry.data_offset,
        size=entry.compressed_size,
        compressed=entry.method != 0,
        crc=recorded_crc(entry),
        resolve=partial(resolve_data_offset, archive, entry),
    )
