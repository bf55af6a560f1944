"""Every pickle inside the containers a download can be: zip (npz), tar, .npy, gzip/bz2/xz.

A scanner is pointed at what people download, and a pickle can sit anywhere in it: a
`model.pkl` in a plain zip, a member named `.txt`, an object array of a `.npy` (numpy
pickles it after the header), an `.npz` (a zip of `.npy`), a checkpoint inside a tar
inside a gzip. Members are recognised by content, never by name, and opened to a
bounded depth; anything that decodes as a pickle is handed to the scan as a
(name, decoded pickle) pair, with what was decoded before an error.

Nothing is inflated blindly: every member is read through a cap on its size and on its
compression ratio, and everything inflated or copied in one scan shares one budget.
Hitting a bound is a problem (the scan fails closed), never a silent skip. Formats that
can hold files but that ckpttool cannot open (7z, RAR) are named as such.
"""

from __future__ import annotations

import ast
import mmap
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol, cast

from ckpttool.buffers import FileData
from ckpttool.errors import CkptError, EncryptedError, LimitError, PickleError, UnknownFormatError
from ckpttool.formatnames import NPY, PLAIN_ZIP, TAR, FormatName
from ckpttool.formats.format import Format, Found, Probe
from ckpttool.formats.safetensors import looks_like_safetensors
from ckpttool.formats.ziparchive import (
    ZipArchive,
    ZipEntry,
    folded,
    is_zip,
    open_archive,
    read_entry,
    resolve_data_offset,
)
from ckpttool.pickle import DEFAULT_LIMITS, Decoded, decode
from ckpttool.pickle.opcodes import NAMES

if TYPE_CHECKING:
    from tarfile import TarFile, TarInfo

    from ckpttool.formats.joblib import JoblibRead

MAX_DEPTH = 4  # archives inside archives
MAX_MEMBER = 256 << 20  # one member read into memory (inflated, or copied out to open it)
MAX_TOTAL = 2 << 30  # everything inflated or copied in one scan
MAX_RATIO = 200  # uncompressed / compressed size past which a large member is not inflated
_RATIO_FLOOR = 1 << 20  # members smaller than this may compress as well as they like
_HEAD = 512

NPY_MAGIC = b"\x93NUMPY"
_SEALED = {b"7z\xbc\xaf\x27\x1c": "a 7z archive", b"Rar!\x1a\x07": "a RAR archive"}


class _Inflater(Protocol):
    """What zlib, bz2 and lzma decompressors share: inflate up to `max_length` bytes."""

    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


_STREAMS: dict[bytes, tuple[FormatName, Callable[[], _Inflater]]] = {
    b"\x1f\x8b": ("gzip", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)),
    b"BZh": ("bz2", lambda: _bz2().BZ2Decompressor()),
    b"\xfd7zXZ\x00": ("xz", lambda: _lzma().LZMADecompressor()),
    # joblib's compressors: a bare zlib stream (its default, compress=3) and legacy .lzma
    **dict.fromkeys((b"x\x01", b"x^", b"x\x9c", b"x\xda"), ("zlib", zlib.decompressobj)),
    b"]\x00\x00": ("lzma", lambda: _lzma().LZMADecompressor(_lzma().FORMAT_ALONE)),
}
_LEGACY_PICKLES = 5  # magic, protocol version, sys_info, the main pickle, storage keys

# torch's legacy format opens with this int pickled; a member that does is read as one
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


def is_tar(head: bytes) -> bool:
    """Whether `tarfile` opens the file, as torch.load tries before reading a pickle stream:
    a first block with the `ustar` magic, or a magic-less (v7) header block tarfile accepts,
    whose first bytes (a member's name) can be anything, a pickle or an npy header too. A
    file opening with a zip's local header is torch.load's zip, never its tar."""
    if is_zip(head):
        return False
    return (len(head) >= 262 and head[257:262] == b"ustar") or _v7_header(head[:_TAR_BLOCK])


_TAR_BLOCK = 512


def _v7_header(block: bytes) -> bool:
    """tarfile's test of a first header block: its checksum (octal text, or base-256)
    equals the sum of the block's bytes, unsigned or signed, with the checksum field as
    spaces; tarfile then parses the other fields (imported only when the checksum holds)."""
    if len(block) < _TAR_BLOCK or block.count(0) == _TAR_BLOCK:
        return False  # an all-zero block ends an archive: no member to read
    field = block[148:156]
    if field[0] in (0o200, 0o377):
        declared = int.from_bytes(field[1:], "big") - (256**7 if field[0] == 0o377 else 0)
    else:
        try:
            declared = int(field.split(b"\0", 1)[0].decode("ascii").strip() or "0", 8)
        except (UnicodeDecodeError, ValueError):
            return False
    rest = block[:148] + block[156:]
    unsigned = 256 + sum(rest)
    signed = unsigned - 256 * sum(1 for b in rest if b > 127)
    if declared not in (unsigned, signed):
        return False
    import tarfile  # only for a block whose checksum holds

    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


# Executables and shared libraries: a loader that takes them from an archive runs them
# (torch._inductor.aoti_load_package loads a PT2 package's compiled model this way).
_NATIVE = {
    b"\x7fELF": "an ELF executable or shared library",
    b"\xcf\xfa\xed\xfe": "a Mach-O binary",
    b"\xce\xfa\xed\xfe": "a Mach-O binary",
    b"\xfe\xed\xfa\xcf": "a Mach-O binary",
    b"\xfe\xed\xfa\xce": "a Mach-O binary",
}


def native_code(head: bytes) -> str | None:
    """What kind of machine code `head` opens, if it is an executable or shared library
    (ELF, Mach-O, or a Windows PE file)."""
    found = next((what for magic, what in _NATIVE.items() if head.startswith(magic)), None)
    if found is None and head.startswith(b"MZ") and len(head) >= 64:
        at = int.from_bytes(head[60:64], "little")
        if head[at : at + 4] == b"PE\x00\x00":
            found = "a Windows executable or DLL"
    return found


def sealed_archive(head: bytes) -> str | None:
    """'a 7z archive' for formats ckpttool recognises but cannot open, else None."""
    return next((what for magic, what in _SEALED.items() if head.startswith(magic)), None)


def refuse_sealed(head: bytes, path: str) -> None:
    what = sealed_archive(head)
    if what is not None:
        raise UnknownFormatError(f"{what}, which ckpttool cannot open: extract it and scan its files", path=path)


def container_kind(head: bytes) -> FormatName | None:
    """The container formats scan opens by content (a zip or tar needs a closer look to tell
    a torch layout from a plain archive: `is_torch_zip`, `is_legacy_tar`)."""
    if head.startswith(NPY_MAGIC):
        return NPY
    for magic, (name, _) in _STREAMS.items():
        if head.startswith(magic):
            return name
    return None


def is_legacy_tar(path: str) -> bool:
    names = _tar_names(path)
    return names is not None and {"storages", "tensors", "pickle"} <= names


def _tar_names(path: str) -> set[str] | None:
    import tarfile  # here: reading a torch zip never needs it

    try:
        with tarfile.open(path, mode="r:") as tar:
            return {m.name for m in tar.getmembers()}
    except (tarfile.TarError, OSError, ValueError, UnicodeError, EOFError):
        return None


# -- the entry points ------------------------------------------------------------------------


def scan_container(path: str, kind: FormatName) -> Found:
    """Every pickle in the zip / tar / npy / compressed stream at `path`."""
    scanner = _Scanner()
    if kind == PLAIN_ZIP:
        scanner.zip_file("", open_archive(path), 0)
    elif kind == TAR:
        scanner.tar_file("", path, 0)
    else:
        with _mapped(path) as data:
            scanner.content(os.path.basename(path), data, 0, len(data), 0)
    return scanner.found.summarise()


def scan_torch_load_reading(path: str) -> Found:
    """The pickles torch.load reads from a file of a format that holds none (`_Scanner.torch_load_reading`)."""
    scanner = _Scanner()
    label = f"{os.path.basename(path)} (as torch.load reads it)"
    with _mapped(path) as data:
        if len(data):
            scanner.torch_load_reading(label, data, 0, len(data))
    return scanner.found


def scan_zip_archive(archive: ZipArchive, skip: frozenset[str] = frozenset(), *, storages: bool = True) -> Found:
    """`scan_container` for a zip whose central directory is already read; the members in
    `skip` are raw bytes its format says nothing unpickles. `storages`: whether a `data.pkl`
    makes the records under `data/` a torch checkpoint's storages, left out too (not so in
    a PT2 archive, whose `data/` holds what torch.export.load unpickles)."""
    scanner = _Scanner()
    scanner.zip_file("", archive, 0, skip, storages=storages)
    return scanner.found.summarise()


def scan_zip_members(archive: ZipArchive, skip: set[str]) -> Found:
    """The members of a torch zip besides its storages and the pickles in `skip`: anything
    else in it that holds a pickle is scanned too."""
    scanner = _Scanner()
    scanner.zip_file("", archive, 0, skip)
    return scanner.found


def scan_tar_members(path: str, skip: set[str]) -> Found:
    scanner = _Scanner()
    scanner.tar_file("", path, 0, skip)
    return scanner.found


def _as_joblib(data: FileData, start: int, end: int, name: str, plain: Decoded | None) -> JoblibRead | None:
    """joblib's reading of a pickle that names a global at all (joblib's array wrapper is
    one): a torch zip's small records never import the joblib reader."""
    if plain is None or not plain.globals:
        return None
    from ckpttool.formats.joblib import read_as_joblib

    return read_as_joblib(data, start, end, name, plain)


def trailing_data(decoded: Decoded, end: int) -> str | None:
    """Where one pickle is expected (a torch record, an npy array), bytes after its STOP are
    what scanners that read every pickle in a stream and torch (which reads one) disagree on."""
    if decoded.end < end:
        return f"{end - decoded.end} bytes after the pickle's STOP, which torch.load never reads"
    return None


# A string literal (kept whole) or an integer with Python 2's long suffix.
_LONG_SUFFIX = re.compile(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|\b(\d+)[lL]\b""")
_PADDING = 64  # whitespace after an npy pickle's STOP up to this is padding, not data


# -- the walk ---------------------------------------------------------------------------------


class _Scanner:
    def __init__(self) -> None:
        self.found = Found()
        self.budget = MAX_TOTAL

    def charge(self, name: str, size: int) -> None:
        if size > MAX_MEMBER or size > self.budget:
            raise LimitError(f"{name}: {size} bytes to inflate or copy exceed the scan's bounds")
        self.budget -= size

    def content(self, name: str, data: FileData, start: int, end: int, depth: int, archives: bool = True) -> None:
        """Whatever `data[start:end]` is: an archive, an npy, a pickle stream, or nothing.
        `archives=False`: anything but a zip or tar (the other reading of a tar's bytes)."""
        head = bytes(data[start : min(end, start + _HEAD)])
        try:
            self._content(name, head, data, start, end, depth, archives)
        except EncryptedError:
            raise  # nothing inside can be scanned: the file is unreadable, not a finding
        except CkptError as exc:
            self.found.problems.append(f"{name}: {exc.message}")

    def _content(
        self, name: str, head: bytes, data: FileData, start: int, end: int, depth: int, archives: bool
    ) -> None:
        archive = archives and (is_zip(head) or is_tar(head))
        sealed = sealed_archive(head)
        if sealed is not None and not archive:
            self.found.problems.append(f"{name}: {sealed}, which ckpttool cannot open")
            return
        native = native_code(head)
        if native is not None:
            self.found.problems.append(f"{name}: {native}: whatever loads it from here runs its code")
            return
        kind = container_kind(head)
        nested = archive or (kind is not None and kind != NPY)
        if nested and depth >= MAX_DEPTH:
            self.found.problems.append(f"{name}: archives nested deeper than {MAX_DEPTH} levels are not opened")
        elif archive:
            self.nested_archive(name, data, start, end, depth + 1)
        elif kind == NPY:
            self.npy(name, data, start, end)
        elif kind is not None:
            self.stream(name, kind, data, start, end, depth + 1)
        elif looks_like_safetensors(head, end - start):
            self.torch_load_reading(name, data, start, end)
        elif head and head[0] in NAMES:
            self.pickles(name, data, start, end, strict=head[:1] == b"\x80")

    # pickles

    def pickles(self, name: str, data: FileData, start: int, end: int, *, strict: bool, single: bool = False) -> None:
        """Every pickle back to back, as a stream of loads reads them. A member that does not
        open with PROTO is a pickle only if it decodes (or names importable-looking globals).
        `single`: a record torch reads one pickle from (bytes after it are a problem)."""
        if single:
            self.single_pickle(name, data, start, end)
            return
        index = 0
        while start < end:
            label = f"{name} (pickle {index})" if index else name
            try:
                decoded = _read_on(data, start, end, name)
            except PickleError as exc:
                joblib = _as_joblib(data, start, end, name, exc.partial)
                if not (joblib and not joblib.problem and exc.partial):
                    self.failed(label, exc, strict or index > 0)
                    return
                from ckpttool.formats.joblib import without_problems

                self.found.pickles += [(label + suffix, d) for suffix, d in joblib.pickles]
                self.found.pickles.append((f"{label} (as pickle.loads reads it)", without_problems(exc.partial)))
                start, index = joblib.end, index + 1
                continue
            joblib = _as_joblib(data, start, end, name, decoded)
            if joblib and not joblib.problem and joblib.end != decoded.end:
                # pickle.loads read joblib's array bytes as opcodes and happened to get through
                from ckpttool.formats.joblib import without_problems

                self.found.pickles += [(label + suffix, d) for suffix, d in joblib.pickles]
                self.found.pickles.append((f"{label} (as pickle.loads reads it)", without_problems(decoded)))
                start, index = joblib.end, index + 1
                continue
            self.found.pickles.append((label, decoded))
            self.found.add_joblib(label, joblib)
            if index == 0 and decoded.value == MAGIC_NUMBER and type(decoded.value) is int:
                self.legacy(name, data, decoded.end, end)
                return
            start, index = decoded.end, index + 1

    def torch_load_reading(self, name: str, data: FileData, start: int, end: int) -> None:
        """What torch.load (or one pickle.load) unpickles from bytes of another format that is
        no zip or tar: the pickle at their first byte, and only when that is torch's legacy
        magic number, the legacy pickles after it. A safetensors header's length opens with
        any byte (PROTO in one file of 32): bytes that fail before naming anything importable
        are no pickle; but opcodes there can skip to a pickle in a string or tensor data."""
        if data[start] not in NAMES:
            return
        try:
            decoded = _read_on(data, start, end, name)
        except PickleError as exc:
            self.failed(name, exc, strict=False)
            return
        legacy = type(decoded.value) is int and decoded.value == MAGIC_NUMBER
        if decoded.globals or decoded.problems or legacy:
            self.found.pickles.append((name, decoded))
        if legacy:
            self.legacy(name, data, decoded.end, end)

    def failed(self, label: str, exc: PickleError, strict: bool) -> None:
        partial = exc.partial
        named = partial is not None and any(_importable(g.module) for g in partial.globals)
        if not strict and not named and not isinstance(exc, LimitError):
            return  # text that happens to start with a protocol-0 opcode, not a pickle
        # (a limit is no such failure: the reader goes on where the scan stopped)
        if partial is not None:
            self.found.pickles.append((f"{label} (up to the error)", partial))
        self.found.problems.append(f"{label}: {exc.message}")

    def legacy(self, name: str, data: FileData, start: int, end: int) -> None:
        """torch's legacy format: the remaining stacked pickles, then raw storage bytes."""
        for index in range(1, _LEGACY_PICKLES):
            try:
                decoded = decode(data, start=start, end=end, source=name)
            except PickleError as exc:
                self.failed(f"{name} (pickle {index})", exc, True)
                return
            self.found.pickles.append((f"{name} (pickle {index})", decoded))
            start = decoded.end

    def npy(self, name: str, data: FileData, start: int, end: int) -> None:
        header, body = _npy_header(data, start, end)
        if _holds_objects(header.get("descr")):  # numpy pickles object arrays after the header
            self.single_pickle(f"{name} (object array)", data, body, end)

    def single_pickle(self, label: str, data: FileData, start: int, end: int) -> None:
        try:
            decoded = decode(data, start=start, end=end, source=label)
        except PickleError as exc:
            self.failed(label, exc, True)
            return
        self.found.pickles.append((label, decoded))
        extra = trailing_data(decoded, end)
        if extra and end - decoded.end <= _PADDING and not bytes(data[decoded.end : end]).strip():
            extra = None  # padding (Python 2's numpy ended its pickles with a newline): nothing reads it
        if extra:
            self.found.problems.append(f"{label}: {extra}")

    # archives

    def nested_archive(self, name: str, data: FileData, start: int, end: int, depth: int) -> None:
        self.charge(name, end - start)
        with _copied(data, start, end) as path:
            if is_zip(bytes(data[start : start + 4])):
                self.zip_file(f"{name}/", open_archive(path), depth)
            else:
                self.tar_file(f"{name}/", path, depth)

    def zip_file(
        self,
        prefix: str,
        archive: ZipArchive,
        depth: int,
        skip: frozenset[str] | set[str] = frozenset(),
        *,
        storages: bool = True,
    ) -> None:
        torch_pickles: set[str] = set()
        skip = set(skip)
        if archive.record("data.pkl") is not None:
            # a torch checkpoint: its storages are raw bytes torch never unpickles, and
            # each .pkl record is one pickle
            names = list(archive.folded_names())
            if storages:
                folder = folded(f"{archive.root}/data/")  # found whatever the case of their letters
                skip |= {name for name, key in names if key.startswith(folder)}
            torch_pickles = {name for name, key in names if key.endswith(".pkl")}
        with open(archive.path, "rb") as f:
            for member in archive.order:
                if member in skip or member.endswith("/"):
                    continue
                label = prefix + member
                self.found.members += 1
                try:
                    self.zip_member(label, archive, archive.entries[member], f, depth, member in torch_pickles)
                except EncryptedError:
                    raise
                except CkptError as exc:
                    self.found.problems.append(f"{label}: {exc.message}")
        self.found.problems.extend(f"{prefix}{a}" if prefix else a for a in archive.anomalies)

    def zip_member(
        self, label: str, archive: ZipArchive, entry: ZipEntry, f: IO[bytes], depth: int, single: bool
    ) -> None:
        if entry.method == 0:  # stored: read in place, no copy
            offset = resolve_data_offset(archive, entry, f)
            with _mapped_file(f) as data:
                self.member(label, data, offset, offset + entry.compressed_size, depth, single)
            return
        if entry.size > _RATIO_FLOOR and entry.size > MAX_RATIO * max(entry.compressed_size, 1):
            raise LimitError(f"compresses {entry.size // max(entry.compressed_size, 1)}:1; not inflated (zip bomb?)")
        if not _worth_inflating(read_entry_head(archive, entry, f)):
            return
        self.charge(label, entry.size)
        data = read_entry(archive, entry, min(entry.size, MAX_MEMBER), f)
        self.member(label, data, 0, len(data), depth, single)

    def member(self, label: str, data: FileData, start: int, end: int, depth: int, single: bool) -> None:
        if single:
            self.single_pickle(label, data, start, end)
        else:
            self.content(label, data, start, end, depth)

    def tar_file(self, prefix: str, path: str, depth: int, skip: set[str] | None = None) -> None:

        with _tar_opened(path) as tar, _mapped(path) as data:
            members = [m for m in tar.getmembers() if _has_data(m) and m.name not in (skip or set())]
            self.first_bytes(prefix.rstrip("/") or os.path.basename(path), data, depth)
            for member in members:
                self.found.members += 1
                if member.issparse():
                    self.sparse_member(prefix + member.name, tar, member, depth)
                    continue
                end = min(member.offset_data + member.size, len(data))
                self.content(prefix + member.name, data, member.offset_data, end, depth)

    def sparse_member(self, label: str, tar: TarFile, member: TarInfo, depth: int) -> None:
        """A sparse member reads as tarfile reads it, its stored chunks with zeros between
        them: the stored bytes in place are another pickle."""
        import tarfile

        try:
            self.charge(label, member.size)
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else b""
        except CkptError as exc:
            self.found.problems.append(f"{label}: {exc.message}")
            return
        except (tarfile.TarError, OSError, EOFError) as exc:
            self.found.problems.append(f"{label}: unreadable sparse member: {exc}")
            return
        self.content(label, data, 0, len(data), depth)

    def first_bytes(self, name: str, data: FileData, depth: int) -> None:
        """A tar's first header block is nearly free (a v7 tar's opens with a member's name):
        its first bytes can also be a pickle, an npy or a compressed stream, which
        pickle.load or numpy would read instead of the members. That reading is scanned too;
        it counts when it yields a pickle (a real tar's first name is none)."""
        head = bytes(data[:_HEAD])
        if not head or (head[0] not in NAMES and container_kind(head) is None):
            return
        other = _Scanner()
        other.budget = self.budget
        label = f"{name} (read from its first byte, not as a tar)"
        if container_kind(head) is None:
            try:
                other.found.pickles.append((label, decode(data, start=0, end=len(data), source=label)))
            except PickleError as exc:
                other.failed(label, exc, False)
        else:
            other.content(label, data, 0, len(data), depth, archives=False)
        if other.found.pickles:
            self.budget = other.budget
            self.found.add(other.found)

    def stream(self, name: str, kind: FormatName, data: FileData, start: int, end: int, depth: int) -> None:
        """A gzip / bz2 / xz stream, inflated under the budget, then read by content."""
        inflated = _inflate_stream(kind, data, start, end, min(MAX_MEMBER, self.budget), name)
        self.charge(name, len(inflated))
        self.content(f"{name} ({kind})", inflated, 0, len(inflated), depth)


# -- helpers ----------------------------------------------------------------------------------


@contextmanager
def _tar_opened(path: str) -> Iterator[TarFile]:
    """The tar at `path`, its members read (every header: an error is an unreadable archive)."""
    import tarfile

    unreadable = (tarfile.TarError, OSError, ValueError, UnicodeError, EOFError)
    try:
        tar = tarfile.open(path, mode="r:")
    except unreadable as exc:
        raise UnknownFormatError(f"unreadable tar archive: {exc}") from None
    with tar:
        try:
            tar.getmembers()
        except unreadable as exc:
            raise UnknownFormatError(f"unreadable tar archive: {exc}") from None
        yield tar


def _has_data(member: TarInfo) -> bool:
    """The members whose bytes tarfile hands out: regular files, and members of a type it
    does not know (read as regular files)."""
    import tarfile

    return member.isreg() or member.type not in tarfile.SUPPORTED_TYPES


def _read_on(data: FileData, start: int, end: int, source: str) -> Decoded:
    """The pickle a reader unpickles from `data[start]`, decoded in at most the size limit's
    bytes: a reader goes on past them, so running out of bytes there is a `LimitError` (not
    the failure of bytes that are no pickle), and so is any other limit."""
    window = min(end, start + DEFAULT_LIMITS.max_bytes)
    return decode(data, start=start, end=window, source=source, stream_end=end)


def _importable(module: str) -> bool:
    return bool(module) and all(part.isidentifier() for part in module.split("."))


def _worth_inflating(head: bytes) -> bool:
    """Only members that can hold a pickle are inflated whole."""
    if not head:
        return False
    return (
        head[0] in NAMES
        or is_zip(head)
        or is_tar(head)
        or container_kind(head) is not None
        or sealed_archive(head) is not None
        or len(head) < 262  # too short to rule out a tar: the rest decides
    )


def read_entry_head(archive: ZipArchive, entry: ZipEntry, f: IO[bytes]) -> bytes:
    """The first bytes of a DEFLATE member, inflated without inflating the rest."""
    offset = resolve_data_offset(archive, entry, f)
    f.seek(offset)
    raw = f.read(min(entry.compressed_size, 1 << 16))
    try:
        return zlib.decompressobj(-15).decompress(raw, _HEAD)
    except zlib.error:
        return b""


def _bz2() -> ModuleType:
    import bz2  # imported only when a stream needs it: probing a torch zip never does

    return bz2


def _lzma() -> ModuleType:
    import lzma

    return lzma


def _inflate_stream(kind: FormatName, data: FileData, start: int, end: int, cap: int, name: str) -> bytes:
    lzma = _lzma()  # for its error type
    make = next(factory for label, factory in _STREAMS.values() if label == kind)
    inflater = make()
    out = bytearray()
    pos = start
    try:
        while pos < end and not getattr(inflater, "eof", False):
            chunk = bytes(data[pos : min(end, pos + (1 << 20))])
            pos += len(chunk)
            out += inflater.decompress(chunk, cap + 1 - len(out))
            if len(out) > cap:
                raise LimitError(f"{kind} stream inflates past {cap} bytes; not scanned further")
    except (zlib.error, OSError, EOFError, lzma.LZMAError) as exc:
        raise UnknownFormatError(f"corrupt {kind} stream: {exc}") from None
    return bytes(out)


def _npy_header(data: FileData, start: int, end: int) -> tuple[dict[object, object], int]:
    """numpy's header: magic, version, header length, a dict literal (read as numpy does,
    with literal_eval, never eval; Python 2's `2L` integers as numpy reads them too)."""
    major = data[start + 6] if end - start > 8 else 0
    width = 2 if major == 1 else 4
    if major not in (1, 2, 3) or start + 8 + width > end:
        raise UnknownFormatError(f"npy file of unknown version {major}")
    (length,) = struct.unpack_from("<H" if width == 2 else "<I", bytes(data[start + 8 : start + 8 + width]))
    body = start + 8 + width + length
    if body > end:
        raise UnknownFormatError("npy header runs past the end of the file")
    text = bytes(data[start + 8 + width : body]).decode("latin1")
    try:
        header = ast.literal_eval(_without_long_suffixes(text) if major in (1, 2) else text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise UnknownFormatError("npy header is not a Python literal") from None
    if not isinstance(header, dict):
        raise UnknownFormatError("npy header is not a dict")
    return header, body


def _without_long_suffixes(text: str) -> str:
    """`(2L, 3L)` as `(2, 3)`: the `L` after an integer, outside strings (numpy's own filter
    for headers written by Python 2)."""
    return _LONG_SUFFIX.sub(lambda m: m.group(1) or m.group(2), text)


def _holds_objects(descr: object) -> bool:
    """Whether numpy's dtype description has an object field anywhere (then the array is
    pickled), as numpy itself reads the description: `object`, `(2,)O`, `i4,O` all hold
    objects. Anything numpy does not read counts as holding objects: decoding it is harmless."""
    import warnings

    import numpy as np  # only for npy files: numpy parses its own descriptions (C code, no import)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(np.lib.format.descr_to_dtype(cast(Any, descr)).hasobject)
    except Exception:  # noqa: BLE001 - numpy refuses it: the file does not load, nothing to judge
        return True


@contextmanager
def _mapped(path: str) -> Iterator[FileData]:
    with open(path, "rb") as f, _mapped_file(f) as data:
        yield data


@contextmanager
def _mapped_file(f: IO[bytes]) -> Iterator[FileData]:
    if os.fstat(f.fileno()).st_size == 0:
        yield b""
        return
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        yield data


@contextmanager
def _copied(data: FileData, start: int, end: int) -> Iterator[str]:
    """A nested archive copied to a temporary file, so the archive readers can open it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ckpttool-") as folder:
        path = os.path.join(folder, "member")
        with open(path, "wb") as f:
            for pos in range(start, end, 1 << 20):
                f.write(bytes(data[pos : min(end, pos + (1 << 20))]))
        yield path


# -- the formats: holding pickles, never a checkpoint -------------------------------------------


def _sealed(probe: Probe) -> Found:
    refuse_sealed(probe.head, probe.path)
    return Found()


def _scanned_as(kind: FormatName) -> Callable[[Probe], Found]:
    return lambda probe: scan_container(probe.path, kind)


def _not_tar(recognise: Callable[[Probe], bool]) -> Callable[[Probe], bool]:
    """torch.load reads any file tarfile opens (but a zip) as its legacy tar, whatever else
    its first bytes are (a v7 tar's header can open an npy or a stream): such a file is
    left to the tar formats, which scan that other reading too."""
    return lambda probe: recognise(probe) and not is_tar(probe.head)


def _stream(name: Literal["gzip", "bz2", "xz", "zlib", "lzma"]) -> Format:
    magics = tuple(m for m, (label, _) in _STREAMS.items() if label == name)
    recognise = _not_tar(lambda probe: probe.head.startswith(magics))
    return Format(name, recognise, pickles=_scanned_as(name), scan_only=True)


def _plain_zip(probe: Probe) -> bool:
    """A zip without torch's data.pkl that is no PT2 archive: an npz, a download. The
    central directory read here is the one the torch zip formats read next."""
    if not is_zip(probe.head) or probe.archive().record("data.pkl") is not None:
        return False
    from ckpttool.formats.pt2 import is_pt2  # it scans through this module

    return not is_pt2(probe.archive())


SEALED_FORMAT = Format(
    "sealed", _not_tar(lambda probe: sealed_archive(probe.head) is not None), pickles=_sealed, scan_only=True
)
NPY_FORMAT = Format(
    "npy", _not_tar(lambda probe: probe.head.startswith(NPY_MAGIC)), pickles=_scanned_as(NPY), scan_only=True
)
GZIP_FORMAT, BZ2_FORMAT, XZ_FORMAT = _stream("gzip"), _stream("bz2"), _stream("xz")
ZLIB_FORMAT, LZMA_FORMAT = _stream("zlib"), _stream("lzma")
TAR_FORMAT = Format(
    "tar",
    lambda probe: is_tar(probe.head) and not is_legacy_tar(probe.path),
    pickles=_scanned_as(TAR),
    scan_only=True,
)
ZIP_FORMAT = Format(PLAIN_ZIP, _plain_zip, pickles=lambda probe: scan_zip_archive(probe.archive()), scan_only=True)
