"""torch's legacy formats: stacked pickles (before 1.6) and the older tar archive.

Stacked: the magic number, protocol version 1001, a sys_info dict, the main pickle,
the sorted storage keys, then for each key an int64 element count and the raw
bytes. Tar: members `sys_info`, `storages` (a count, then per storage a pickled
`(key, location, type)` header, an int64 count and the bytes), `tensors` (per tensor
a pickled header and binary sizes/strides/offset) and `pickle` (the main object,
whose persistent ids name those tensors and storages).

Every pickle is decoded inert by the machine, once per opened file: the read keeps
each by name on the probe, so a scan of the same file (`legacy_pickles`) and a rewrite
of its main pickle (`main_pickle`) take them from there.
"""

from __future__ import annotations

import mmap
import os
import struct
from functools import partial
from typing import Any, BinaryIO

from ckpttool.buffers import FileData
from ckpttool.checkpoint import Checkpoint, Record, Storage, TensorRef
from ckpttool.dtypes import storage_dtype
from ckpttool.errors import FormatError
from ckpttool.formatnames import LEGACY, LEGACY_TAR
from ckpttool.formats.containers import MAGIC_NUMBER, is_tar, scan_tar_members
from ckpttool.formats.format import Format, Found, Probe, read_once
from ckpttool.formats.torchpickle import StorageTable, check_tensors, interpret_torch_pickle
from ckpttool.interpret import Interpreter
from ckpttool.pickle import Decoded, Global, decode

PROTOCOL_VERSION = 1001
Seen = list[tuple[str, Decoded]]


def starts_with_magic(data: FileData) -> bool:
    """True when the first pickle in `data` is torch's legacy magic number."""
    try:
        first = decode(data, end=min(len(data), 64))
    except FormatError:
        return False
    return first.value == MAGIC_NUMBER and type(first.value) is int


class _Reader:
    """Sequential decoding over one mapped file. Each pickle is decoded inert and added to
    `seen` by name, in file order; one already there is not decoded again."""

    def __init__(self, path: str, data: FileData, seen: Seen) -> None:
        self.path, self.data, self.seen = path, data, seen
        self.known = dict(seen)

    def pickle(self, name: str, start: int, end: int | None = None) -> Decoded:
        decoded = self.known.get(name)
        if decoded is None:
            decoded = decode(self.data, start=start, end=end, source=f"{self.path}:{name}")
            self.seen.append((name, decoded))
            self.known[name] = decoded
        return decoded

    def int64(self, offset: int, what: str) -> int:
        if offset + 8 > len(self.data):
            raise FormatError(f"{what} is cut off at byte {offset}", path=self.path)
        value: int = struct.unpack_from("<q", self.data, offset)[0]
        return value


def _mapped(path: str) -> tuple[BinaryIO, mmap.mmap]:
    f = open(path, "rb")
    try:
        return f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (ValueError, OSError) as exc:
        f.close()
        raise FormatError(f"cannot map the file: {exc}", path=path) from None


def read_legacy(path: str) -> Checkpoint:
    return _read_legacy(path, [])


def _read_legacy(path: str, seen: Seen) -> Checkpoint:
    f, data = _mapped(path)
    try:
        return _read_stacked(_Reader(path, data, seen), os.fstat(f.fileno()).st_size)
    finally:
        data.close()
        f.close()


def _read_stacked(r: _Reader, size: int) -> Checkpoint:
    magic = r.pickle("magic number", 0)
    if magic.value != MAGIC_NUMBER:
        raise FormatError("not a legacy torch file (no magic number)", path=r.path)
    version = r.pickle("protocol version", magic.end)
    if version.value != PROTOCOL_VERSION:
        raise FormatError(
            f"legacy protocol version {version.value!r}; torch reads only {PROTOCOL_VERSION}", path=r.path
        )
    sys_info = r.pickle("sys_info", version.end)
    table = StorageTable(r.path, _byteorder(sys_info.value), legacy=True)
    main = r.pickle("main pickle", sys_info.end)
    keys = r.pickle("storage keys", main.end)
    root = interpret_torch_pickle(main, table)
    end = _attach_stacked_records(r, table, keys.value, keys.end)
    anomalies = list(table.anomalies)
    if end != size:
        anomalies.append(f"{size - end} bytes follow the last storage")
    check_tensors(root, r.path)
    return Checkpoint(r.path, LEGACY, size, root, table.storages, table.byteorder, {}, anomalies, [r.path])


def _byteorder(sys_info: Any) -> str:
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        return "big"
    return "little"


def _attach_stacked_records(r: _Reader, table: StorageTable, keys: Any, offset: int) -> int:
    if not isinstance(keys, list):
        raise FormatError("storage key list is not a list", path=r.path)
    for key in keys:
        storage = table.storages.get(str(key))
        if storage is None:
            raise FormatError(f"storage data for key {key!r}, which no tensor uses", path=r.path)
        offset = _attach(r, storage, offset, f"storage {key!r}")
    missing = [s.key for s in table.storages.values() if s.record is None]
    if missing:
        raise FormatError(f"storages without data: {', '.join(missing[:5])}", path=r.path)
    return offset


def _attach(r: _Reader, storage: Storage, offset: int, name: str) -> int:
    """A storage's bytes: an int64 element count, then the elements."""
    count = r.int64(offset, name)
    if count != storage.numel:
        raise FormatError(f"{name} holds {count} elements but declares {storage.numel}", path=r.path)
    start, nbytes = offset + 8, storage.nbytes
    if start + nbytes > len(r.data):
        raise FormatError(f"{name} is cut off: needs {nbytes} bytes at byte {start}", path=r.path)
    storage.record = Record(r.path, name, start, nbytes)
    return start + nbytes


# -- the tar variant ---------------------------------------------------------------


def read_legacy_tar(path: str) -> Checkpoint:
    return _read_legacy_tar(path, [])


def _read_legacy_tar(path: str, seen: Seen) -> Checkpoint:
    members = _tar_members(path)
    f, data = _mapped(path)
    try:
        r = _Reader(path, data, seen)
        objects: dict[str, Storage | TensorRef] = {}
        _read_tar_storages(r, members["storages"], objects)
        _read_tar_tensors(r, members["tensors"], objects)
        resolve = partial(_tar_object, r.path, objects)
        main = r.pickle("pickle", *members["pickle"])
        root = Interpreter(resolve, path).value(main.value)
        check_tensors(root, path)
        storages = {k: v for k, v in objects.items() if isinstance(v, Storage)}
        size = os.fstat(f.fileno()).st_size
        return Checkpoint(path, LEGACY_TAR, size, root, storages, files=[path], persistent_objects=objects)
    finally:
        data.close()
        f.close()


def _tar_members(path: str) -> dict[str, tuple[int, int]]:
    """Where the members torch reads lie. torch takes the last member of each name
    (`getmember`), follows a link to another member's bytes, expands a sparse file and
    reads a member of an unknown type as a regular file: only a plain regular member is
    read in place, anything else is refused rather than read otherwise than torch does."""
    import tarfile  # only this old variant needs it

    try:
        with tarfile.open(path, mode="r:") as tar:
            last = {m.name: m for m in tar.getmembers()}
    except (tarfile.TarError, ValueError, UnicodeError, EOFError) as exc:
        raise FormatError(f"unreadable tar archive: {exc}", path=path) from None
    missing = [name for name in _READ_MEMBERS if name not in last]
    if missing:
        raise FormatError(f"legacy tar checkpoint without {', '.join(missing)}", path=path)
    for name in _READ_MEMBERS:
        member = last[name]
        if member.issparse() or not member.isreg():
            kind = "a sparse file" if member.issparse() else "a link" if member.islnk() or member.issym() else None
            what = kind or f"of tar type {member.type!r}"
            raise FormatError(f"legacy tar member {name!r} is {what}, which torch.load reads elsewhere", path=path)
    return {name: (m.offset_data, m.offset_data + m.size) for name, m in last.items() if name in _READ_MEMBERS}


def _read_tar_storages(r: _Reader, span: tuple[int, int], objects: dict[str, Storage | TensorRef]) -> None:
    start, end = span
    count = r.pickle("storages: count", start, end)
    pos = count.end
    for i in range(_count(count.value, r.path)):
        header = r.pickle(f"storages: header {i}", pos, end)
        key, location, dtype = _storage_header(r.path, header.value)
        numel = r.int64(header.end, f"storage {key!r}")
        storage = Storage(key, dtype, numel, location)
        objects[key] = storage
        pos = _attach(r, storage, header.end, f"storage {key!r}")
    views = r.pickle("storages: views", pos, end)
    for view in views.value if isinstance(views.value, list) else []:
        _add_view(r.path, objects, view)


def _storage_header(path: str, value: Any) -> tuple[str, str, str]:
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[2], Global):
        dtype = storage_dtype(value[2].module, value[2].name)
        if dtype is not None and isinstance(value[1], str):
            return str(value[0]), value[1], dtype
    raise FormatError(f"malformed storage header {value!r:.80}", path=path)


def _add_view(path: str, objects: dict[str, Storage | TensorRef], view: Any) -> None:
    if not (isinstance(view, tuple) and len(view) == 4):
        raise FormatError("malformed storage view", path=path)
    target, base_key, offset, numel = view
    base = objects.get(str(base_key))
    fits = (
        isinstance(offset, int) and isinstance(numel, int) and offset >= 0 and numel >= 0
    )  # torch slices bytes with them
    if not isinstance(base, Storage) or base.record is None or not fits or offset + numel > base.numel:
        raise FormatError(f"storage view {target!r} does not fit storage {base_key!r}", path=path)
    start = base.record.offset + offset * base.itemsize
    record = Record(path, f"storage view {target!r}", start, numel * base.itemsize)
    objects[str(target)] = Storage(str(target), base.dtype, numel, base.location, record)


def _read_tar_tensors(r: _Reader, span: tuple[int, int], objects: dict[str, Storage | TensorRef]) -> None:
    start, end = span
    count = r.pickle("tensors: count", start, end)
    pos = count.end
    for i in range(_count(count.value, r.path)):
        header = r.pickle(f"tensors: header {i}", pos, end)
        if not (isinstance(header.value, tuple) and len(header.value) == 3):
            raise FormatError("malformed tensor header", path=r.path)
        key, storage_id, _ = header.value
        storage = objects.get(str(storage_id))
        if not isinstance(storage, Storage):
            raise FormatError(f"tensor {key!r} uses unknown storage {storage_id!r}", path=r.path)
        tensor, pos = _tensor_layout(r, header.end, end, storage)
        objects[str(key)] = tensor


def _tensor_layout(r: _Reader, pos: int, end: int, storage: Storage) -> tuple[TensorRef, int]:
    if pos + 8 > end:
        raise FormatError("tensor layout cut off", path=r.path)
    ndim = struct.unpack_from("<i", r.data, pos)[0]
    if ndim < 0 or pos + 8 + 16 * ndim + 8 > end:
        raise FormatError(f"tensor layout with {ndim} dimensions does not fit", path=r.path)
    sizes = struct.unpack_from(f"<{ndim}q", r.data, pos + 8)
    strides = struct.unpack_from(f"<{ndim}q", r.data, pos + 8 + 8 * ndim)
    offset = struct.unpack_from("<q", r.data, pos + 8 + 16 * ndim)[0]
    return TensorRef(storage.dtype, sizes, strides, offset, storage), pos + 16 + 16 * ndim


def _tar_object(path: str, objects: dict[str, Storage | TensorRef], pid: Any) -> Any:
    if isinstance(pid, tuple) and pid:
        return pid[0]  # ('module', cls, source_file, source): the class itself
    found = objects.get(str(pid))
    if found is None:
        raise FormatError(f"persistent id {pid!r} names no stored tensor or storage", path=path)
    return found


def _count(value: Any, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FormatError(f"malformed count {value!r:.40}", path=path)
    return value


# -- for scan, and for rewriting ------------------------------------------------------------

_READ_MEMBERS = ("storages", "tensors", "pickle")  # what torch.load reads of a legacy tar

_TAR_MEMBERS = {"sys_info", "storages", "tensors", "pickle"}


def legacy_pickles(probe: Probe, tar: bool) -> Found:
    """Every pickle of the file decoded inert, by name; what torch would refuse is a problem.
    A tar's other members are scanned by content."""
    found = Found()
    seen = _seen(probe)

    def read() -> Checkpoint:
        try:
            return read_once(probe, _read_tar_probe if tar else _read_probe)
        finally:
            found.pickles.extend(seen)  # what decoded before any error counts too

    found.guard(read, keep_anomalies=True)
    if tar:
        found.add(scan_tar_members(probe.path, _TAR_MEMBERS))
    return found


def main_pickle(probe: Probe, tar: bool) -> Decoded:
    """The main pickle as an inert graph, exactly as the file holds it (as the read decoded it)."""
    read_once(probe, _read_tar_probe if tar else _read_probe)
    return dict(_seen(probe))["pickle" if tar else "main pickle"]


def _seen(probe: Probe) -> Seen:
    seen: Seen = probe.memo.setdefault("legacy pickles", [])
    return seen


def _read_probe(probe: Probe) -> Checkpoint:
    return _read_legacy(probe.path, _seen(probe))


def _read_tar_probe(probe: Probe) -> Checkpoint:
    return _read_legacy_tar(probe.path, _seen(probe))


def _has_magic(probe: Probe) -> bool:
    """Whether the file opens with the legacy magic number (decoded once per probe)."""
    if "legacy magic" not in probe.memo:
        probe.memo["legacy magic"] = probe.head[:1] == b"\x80" and starts_with_magic(probe.head)
    found: bool = probe.memo["legacy magic"]
    return found


LEGACY_FORMAT = Format(LEGACY, _has_magic, pickles=lambda probe: legacy_pickles(probe, tar=False), read=_read_probe)
# Any tar is read as torch's: one without its members is named as such. A plain tar's
# pickles are found first by `containers.TAR_FORMAT` when scanning.
LEGACY_TAR_FORMAT = Format(
    LEGACY_TAR,
    lambda probe: is_tar(probe.head),
    pickles=lambda probe: legacy_pickles(probe, tar=True),
    read=_read_tar_probe,
)
