"""torch's zip format (`torch.save` since 1.6) and TorchScript archives.

`<root>/data.pkl` is decoded by the pickle machine; each storage lives in the
uncompressed, aligned record `<root>/data/<key>`. The record must hold exactly
`numel * itemsize` bytes, or the file is refused before anything is read from it.
TorchScript archives (with `constants.pkl` and `code/`) are identified and their
tensors listed from `data.pkl` and `constants.pkl`; their classes' parameter and buffer
declarations are read from `code/` as text (formats/torchscript.py); they are never loaded.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ckpttool.checkpoint import Checkpoint, Record, Storage
from ckpttool.errors import CkptError, FormatError, LimitError, PickleError, ZipFormatError
from ckpttool.formatnames import TORCH_ZIP, TORCHSCRIPT
from ckpttool.formats.containers import scan_zip_members, trailing_data
from ckpttool.formats.format import Format, Found, Probe, read_once
from ckpttool.formats.torchpickle import StorageTable, check_tensors, interpret_torch_pickle
from ckpttool.formats.torchscript import declare, read_declarations
from ckpttool.formats.ziparchive import (
    ZipArchive,
    ZipEntry,
    crc_matches,
    entry_record,
    is_zip,
    open_archive,
    read_entry,
)
from ckpttool.pickle import Decoded, decode
from ckpttool.pickle.judge import TorchScript, is_torchscript_class
from ckpttool.pickle.objects import Call, Global
from ckpttool.weights import all_tensors

MAX_SMALL_RECORD = 4096
# A pickle this large would describe ~10 million tensors; past it a file is refused, and a
# compressed record is never inflated beyond the smaller of this and its declared size.
MAX_PICKLE_RECORD = 256 << 20


def is_torchscript(archive: ZipArchive) -> bool:
    """torch.load hands an archive to torch.jit.load when a record is named `constants.pkl`
    exactly (`_is_torchscript_zip` compares the names it lists, not as its lookups do)."""
    return f"{archive.root}/constants.pkl" in archive.entries


def pickle_names(archive: ZipArchive) -> list[str]:
    """Every pickle in the archive, under any root: the scan covers them all."""
    return [name for name, key in archive.folded_names() if key.endswith(".pkl")]


def read_pickle_bytes(archive: ZipArchive, entry: ZipEntry) -> bytes:
    if entry.size > MAX_PICKLE_RECORD:
        raise LimitError(f"pickle record {entry.name!r} declares {entry.size} bytes", path=archive.path)
    data = read_entry(archive, entry, min(entry.size, MAX_PICKLE_RECORD))
    # torch writes 0 when CRC computation is off (set_crc32_options(False)): not recorded.
    if entry.crc != 0 and not crc_matches(entry, data):
        archive.anomalies.append(f"record {entry.name!r} fails its CRC-32 check")
    return data


def read_pickle(archive: ZipArchive, entry: ZipEntry) -> Decoded:
    """The record's pickle as an inert graph, for scans (no reader hooks): decoded once per
    opened archive, the same graph for each caller."""
    decoded: Decoded | None = archive.decoded.get(entry.name)
    if decoded is None:
        decoded = decode(read_pickle_bytes(archive, entry), source=f"{archive.path}:{entry.name}")
        archive.decoded[entry.name] = decoded
    return decoded


def read_byteorder(archive: ZipArchive) -> str:
    entry = archive.record("byteorder")
    if entry is None:
        return "little"  # torch's default for files without the record
    value = read_entry(archive, entry, MAX_SMALL_RECORD)
    if value not in (b"little", b"big"):
        raise FormatError(f"byteorder record says {value[:20]!r}; expected 'little' or 'big'", path=archive.path)
    return value.decode()


def read_torch_zip(path: str, archive: ZipArchive | None = None) -> Checkpoint:
    archive = archive or open_archive(path)
    _check_roots(archive)
    torchscript = is_torchscript(archive)
    entry = archive.record("data.pkl")
    if entry is None:
        raise ZipFormatError(f"zip archive without {archive.root}/data.pkl: not a torch checkpoint", path=path)
    table = StorageTable(path, read_byteorder(archive))
    root = interpret_torch_pickle(read_pickle(archive, entry), table)  # the scan's decoding, if made
    if torchscript:
        declare(root, read_declarations(archive))
        root = _with_constants(archive, table, root)
    _attach_records(archive, table, root)
    check_tensors(root, path)
    return Checkpoint(
        path=path,
        format=TORCHSCRIPT if torchscript else TORCH_ZIP,
        file_size=archive.file_size,
        root=root,
        storages=table.storages,
        byteorder=table.byteorder,
        metadata=_small_records(archive),
        anomalies=archive.anomalies + table.anomalies,
        files=[path],
    )


def _check_roots(archive: ZipArchive) -> None:
    roots = archive.roots()
    if len(roots) > 1:
        archive.anomalies.append(
            f"records under {len(roots)} root folders ({', '.join(roots)}); torch reads only {archive.root!r}"
        )


def _with_constants(archive: ZipArchive, table: StorageTable, root: Any) -> Any:
    """TorchScript keeps tensor constants in constants.pkl, storages under constants/."""
    entry = archive.record("constants.pkl")
    if entry is None:
        return root
    constants = interpret_torch_pickle(read_pickle(archive, entry), _ConstantsTable(table))
    if not all_tensors(constants):
        return root
    return {"data": root, "constants": constants}


class _ConstantsTable(StorageTable):
    """constants.pkl's storage keys name records under `constants/`, not `data/`."""

    def __init__(self, parent: StorageTable) -> None:
        super().__init__(parent.path, parent.byteorder)
        self.parent = parent

    def resolve(self, pid: Any) -> Any:
        storage = super().resolve(pid)
        if isinstance(storage, Storage):
            key = f"constants:{storage.key}"
            storage = self.parent.storages.setdefault(key, storage)
        return storage


def _attach_records(archive: ZipArchive, table: StorageTable, root: Any) -> None:
    """Each storage's record, found by its name under the archive's root (once per storage)."""
    for storage in table.storages.values():
        storage.record = _record_for(archive, storage)
        storage.record.viewed_by = partial(_keys_viewing, root, storage)


def _record_for(archive: ZipArchive, storage: Storage) -> Record:
    folder, _, key = storage.key.rpartition(":")
    name = (folder or "data") + "/" + key
    entry = archive.record(name)
    if entry is None:
        raise FormatError(f"storage {storage.key!r} has no record {archive.root}/{name}", path=archive.path)
    if entry.size != storage.nbytes:
        raise FormatError(
            f"record {entry.name} holds {entry.size} bytes but storage {storage.key!r} needs "
            f"{storage.nbytes} ({storage.numel} x {storage.dtype})",
            path=archive.path,
        )
    return entry_record(archive, entry)


def _keys_viewing(root: Any, storage: Storage) -> list[str]:
    """Every name of every tensor that views `storage`, for messages about its record."""
    return [named.key for named in all_tensors(root) if getattr(named.tensor, "storage", None) is storage]


def _small_records(archive: ZipArchive) -> dict[str, str]:
    out = {}
    for name in ("version", ".data/version", ".format_version", ".storage_alignment", ".data/serialization_id"):
        entry = archive.record(name)
        if entry is not None and entry.size <= 256:
            out[name.lstrip(".").replace("data/", "")] = (
                read_entry(archive, entry, 256).decode("utf-8", "replace").strip()
            )
    return out


# -- for scan --------------------------------------------------------------------------------


def zip_pickles(probe: Probe) -> Found:
    """Every `.pkl` record under any root, anything else in the archive that holds a pickle,
    and what torch.load would refuse (several roots, a bad record) as problems."""
    archive = probe.archive()
    found = Found()
    for name in pickle_names(archive):
        try:
            decoded = read_pickle(archive, archive.entries[name])
            found.pickles.append((name, decoded))
            extra = trailing_data(decoded, archive.entries[name].size)
            if extra:
                found.problems.append(f"{name}: {extra}")
        except PickleError as exc:
            found.failure(name, exc)
        except CkptError as exc:
            found.problems.append(f"{name}: {exc.message}")
    roots = archive.roots()
    if len(roots) > 1:
        found.problems.append(f"records under {len(roots)} root folders: {', '.join(roots)}")
    found.add(scan_zip_members(archive, set(pickle_names(archive))))  # with the archive's anomalies
    if is_torchscript(archive):
        found.torchscript = _torchscript(archive, found.pickles)
        if found.torchscript.top is None:  # torch.jit.save always pickles the module itself
            found.problems.append(
                "TorchScript archive whose data.pkl holds no TorchScript module, which torch.jit.save never "
                "writes: torch.jit.load still compiles from code/ what its pickles name"
            )
    if not found.problems:
        found.guard(lambda: read_once(probe, _read))
    return found


def _torchscript(archive: ZipArchive, pickles: list[tuple[str, Decoded]]) -> TorchScript:
    """The archive's top-level class (of the object its data.pkl holds) and the code/
    record of each `__torch__` module its pickles name."""
    data = archive.record("data.pkl")
    root = next((d.value for name, d in pickles if data is not None and name == data.name), None)
    func = root.func if isinstance(root, Call) else None
    top = func.qualname if isinstance(func, Global) and is_torchscript_class(func.module) else None
    code = {}
    for module in {ref.module for _, decoded in pickles for ref in decoded.globals}:
        record = archive.record(f"code/{module.replace('.', '/')}.py") if is_torchscript_class(module) else None
        if record is not None:
            code[module] = record.name
    return TorchScript(top, code)


def _read(probe: Probe) -> Checkpoint:
    return read_torch_zip(probe.path, probe.archive())


TORCHSCRIPT_FORMAT = Format(
    TORCHSCRIPT,
    lambda probe: is_zip(probe.head) and is_torchscript(probe.archive()),
    pickles=zip_pickles,
    read=_read,
)
# Any other zip is read as torch's: one without data.pkl is named as such. A plain zip's
# pickles are found first by `containers.ZIP_FORMAT` when scanning.
TORCH_ZIP_FORMAT = Format(TORCH_ZIP, lambda probe: is_zip(probe.head), pickles=zip_pickles, read=_read)
