"""`remap`: rewrite the device every storage is restored to, and nothing else.

Only the pickle changes: its storage ids get new locations, and it is written back
from the inert graph (so a whole pickled model is remapped without its class). The
storage records are copied byte for byte, never decoded. Legacy files come out in
the zip format. The result is verified before it replaces anything: its pickle must
decode to the source's object tree with only the locations changed, and every record
must read back with the CRC-32 the source recorded for it; a source record whose bytes
fail that CRC is refused as damaged (IntegrityError), and nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpttool.atomic import output_set
from ckpttool.checkpoint import Checkpoint, Storage, TensorRef
from ckpttool.errors import CkptError, FormatError, UsageError, VerificationError, about
from ckpttool.formats import LEGACY, LEGACY_TAR, TORCH_ZIP, OpenedFile, open_path, read_checkpoint
from ckpttool.formats.legacy import main_pickle
from ckpttool.formats.torchzip import read_pickle, read_torch_zip
from ckpttool.formats.torchzip_write import StorageRecord, root_folder, storage_class, write_torch_zip
from ckpttool.formats.ziparchive import open_archive, resolve_data_offset
from ckpttool.ops.compare.equivalence import equivalent
from ckpttool.pickle import Call, Decoded, Global, PersistentRef
from ckpttool.pickle.writer import dumps
from ckpttool.tensordata import ByteRange, crc32, inflate_storage, verify_record

if TYPE_CHECKING:
    from ckpttool.progress import Progress

LocationMap = list[tuple[str, str]]


@dataclass
class RemapReport:
    source: str
    output: str
    storages: int
    changed: dict[str, int] = field(default_factory=dict)  # "cuda:0 -> cpu": count
    notes: list[str] = field(default_factory=list)
    verified: str = "same objects, locations rewritten; every record copied intact"


def parse_mapping(device: str | None, maps: tuple[str, ...]) -> LocationMap:
    """`--device cpu` maps every location; `--map cuda:1=cuda:0` one (or, as `cuda`, a type)."""
    mapping: LocationMap = []
    for item in maps:
        source, sep, target = item.partition("=")
        if not sep or not source or not target:
            raise UsageError(f"--map {item!r}: expected FROM=TO, e.g. cuda:1=cuda:0")
        mapping.append((source, target))
    if device:
        mapping.append(("*", device))
    if not mapping:
        raise UsageError("say where storages go: --device cpu, or --map FROM=TO")
    return mapping


def map_location(location: str, mapping: LocationMap) -> str:
    for source, target in mapping:
        if source == "*" or location == source or location.split(":", 1)[0] == source:
            return target
    return location


def refuse_dangerous(src: OpenedFile, force: bool) -> None:
    """The rewritten pickle would carry a payload on: refuse every file `scan` fails
    (dangerous, or calls neither vetted nor allowed in pyproject.toml), naming what it
    found, unless forced."""
    from ckpttool.errors import DangerousSourceError
    from ckpttool.ops.safety.allowconfig import allowed_names
    from ckpttool.ops.safety.scan import UNKNOWN_CALL, danger, scan_opened

    result = scan_opened(src, allowed_names(()))
    found = danger(result)
    if force or (found is None and result.verdict != UNKNOWN_CALL):
        return
    if found is None:
        named = [g.qualname for g in result.globals if g.verdict == UNKNOWN_CALL]
        raise DangerousSourceError(
            f"scan finds calls neither vetted nor a known gadget ({', '.join(named)}); "
            "the rewritten DST would carry them on: --force rewrites it anyway",
            path=src.path,
        )
    raise DangerousSourceError(
        f"scan calls this file dangerous ({found.named}); the rewritten DST would carry it on: "
        "--force rewrites it anyway",
        path=src.path,
    )


def remap(
    src: str, dst: str, mapping: LocationMap, force: bool = False, trust: bool = False, progress: Progress | None = None
) -> RemapReport:
    """`progress`, when given, has `start(total_bytes)` and `advance(bytes)` (as convert's)."""
    if trust:
        return trusted_remap(src, dst, mapping, force)
    opened = open_path(src)
    checkpoint = opened.checkpoint()
    report = RemapReport(src, dst, len(checkpoint.storages))
    rewrite_pickle(checkpoint, dst, report, mapping, force=force, progress=progress, opened=opened)
    if not report.changed:
        report.notes.append("no storage location needed changing")
    return report


def rewrite_pickle(
    checkpoint: Checkpoint,
    dst: str,
    report: RemapReport,
    mapping: LocationMap,
    *,
    force: bool = False,
    progress: Progress | None = None,
    edit: Callable[[Any], None] | None = None,
    expect: Callable[[Any], None] | None = None,
    opened: OpenedFile | None = None,
) -> None:
    """Write a torch checkpoint anew: its pickle re-encoded from the inert graph, storage
    locations mapped, records copied. `edit` may change the inert graph in place first;
    `expect` then makes the same change to `checkpoint.root` (in place), which the output
    must decode to (remap changes only locations; renaming keys changes keys too).
    `opened`: the file `checkpoint` was read from; its scan and its pickle are the ones rewritten."""
    src = checkpoint.path
    if checkpoint.format not in (TORCH_ZIP, LEGACY, LEGACY_TAR):
        raise FormatError(f"only torch checkpoints can be rewritten; this is {checkpoint.format}", path=src)
    if opened is None or opened.path != src:
        opened = open_path(src)
    refuse_dangerous(opened, force)
    decoded = raw_pickle(opened, checkpoint.format)
    if decoded.lossy:
        raise FormatError(
            f"the pickle holds a construct ckpttool cannot rewrite faithfully: {decoded.lossy[0]}", path=src
        )
    if edit is not None:
        edit(decoded.value)
    rewrite = _PidRewriter(mapping, report, checkpoint.persistent_objects)
    pickle_bytes = dumps(decoded.value, rewrite)
    records = _records(checkpoint)
    advance = None
    if progress is not None:
        progress.start(sum(s.nbytes for s in checkpoint.storages.values()))
        advance = progress.advance
    with output_set([src], force) as outs:
        output = outs.open(dst)
        write_torch_zip(output.handle, root_folder(dst), pickle_bytes, records, checkpoint.byteorder, advance)
        output.seal()
        with about(dst):
            _verify(output.temp, checkpoint, mapping, expect)
        outs.commit()


def raw_pickle(src: OpenedFile, fmt: str) -> Decoded:
    """The main pickle as an inert graph, exactly as the file holds it (a zip's as its scan
    decoded it)."""
    if fmt == TORCH_ZIP:
        archive = src.probe.archive()
        entry = archive.record("data.pkl")
        assert entry is not None  # read_checkpoint found it
        return read_pickle(archive, entry)
    return main_pickle(src.probe, tar=fmt == LEGACY_TAR)


class _PidRewriter:
    """New locations for storage ids, written the way the zip format writes them: legacy
    ids lose their view slot, module ids become the class they stand for, and the legacy
    tar format's bare tensor keys become the `_rebuild_tensor_v2` call they stand for."""

    def __init__(self, mapping: LocationMap, report: RemapReport, objects: dict[str, Any]) -> None:
        self.mapping, self.report, self.objects = mapping, report, objects
        self.seen: set[str] = set()

    def __call__(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module" and isinstance(pid[1], Global):
            return pid[1]
        if not isinstance(pid, tuple) or pid[:1] != ("storage",):
            return self._tar_object(pid)
        kind, storage_type, key, location, numel = pid[:5]
        target = map_location(location, self.mapping)
        if target != location and key not in self.seen:
            change = f"{location} -> {target}"
            self.report.changed[change] = self.report.changed.get(change, 0) + 1
        self.seen.add(key)
        return (kind, storage_type, key, target, numel)

    def _tar_object(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and isinstance(pid[0], Global):
            return pid[0]  # (class, source file, source): the class
        found = self.objects.get(str(pid))
        if isinstance(found, Storage):
            return _storage_id(found)
        if isinstance(found, TensorRef) and found.storage is not None:
            hooks = Call(Global("collections", "OrderedDict"), ())
            args = (PersistentRef(_storage_id(found.storage)), found.offset, found.shape, found.stride, False, hooks)
            return Call(Global("torch._utils", "_rebuild_tensor_v2"), args)
        raise FormatError(f"persistent id {pid!r} names nothing ckpttool can rewrite")


def _storage_id(storage: Storage) -> tuple[Any, ...]:
    return ("storage", storage_class(storage.dtype), storage.key, storage.location, storage.numel)


def _records(checkpoint: Checkpoint) -> list[StorageRecord]:
    """Every storage's bytes as they are in the file. A zip record that knows its CRC-32 is
    copied by the kernel under that CRC (verification recomputes it from what was written);
    the writer computes the others' on the way."""
    records = []
    for key, storage in checkpoint.storages.items():
        record = storage.record
        if record is None:
            raise FormatError(f"storage {key!r} has no data in the file", path=checkpoint.path)
        if record.compressed:
            records.append(StorageRecord(key, data=inflate_storage(storage)))
            continue
        span = ByteRange(record.path, record.data_offset(), record.size)
        known = record.crc if record.crc and storage.nbytes else None  # 0: not recorded
        records.append(StorageRecord(key, span=span, crc=known))
    return records


def _verify(path: str, source: Checkpoint, mapping: LocationMap, expect: Callable[[Any], None] | None) -> None:
    """The pickle decodes to the source's objects with only locations changed (and what
    `expect` changes), and each record's bytes on disk have the CRC of the source bytes
    that were copied into it."""
    written = read_torch_zip(path)
    if expect is not None:
        expect(source.root)
    if not equivalent(source.root, written.root, lambda loc: map_location(loc, mapping)):
        raise VerificationError("the rewritten pickle does not decode to the source's objects")
    archive = open_archive(path)
    for key, storage in source.storages.items():
        entry = archive.record(f"data/{key}")
        assert storage.record is not None
        if entry is None or entry.size != storage.nbytes:
            raise VerificationError(f"record data/{key} is missing or has the wrong size")
        # A storage no tensor uses (a legacy tar's base of a storage view) is copied all the
        # same, though the written pickle names it nowhere: its bytes are read from the record.
        copied = written.storages.get(key)
        if copied is None:
            crc = crc32(ByteRange(path, resolve_data_offset(archive, entry), entry.size))
        else:
            crc = _crc(copied)
        if crc != entry.crc:
            # The copy was made under the source's CRC-32: if the source's bytes fail it,
            # the source changed after saving, and that is what to report (IntegrityError).
            verify_record(storage.record)
            raise VerificationError(f"record data/{key} does not read back as written")


def _crc(storage: Storage) -> int:
    record = storage.record
    assert record is not None
    return crc32(ByteRange(record.path, record.data_offset(), record.size))


# -- remap --trust ---------------------------------------------------------------------------------


def trusted_remap(src: str, dst: str, mapping: LocationMap, force: bool) -> RemapReport:
    """`remap --trust`: torch itself loads SRC with the new locations and saves it."""
    import torch

    from ckpttool.ops.safety.trust import trusted_load

    obj = trusted_load(
        src, force, map_location=lambda storage, location: _restore(storage, map_location(location, mapping))
    )
    report = RemapReport(src, dst, storages=0, notes=["loaded with torch.load(weights_only=False) (--trust)"])
    with output_set([src], force) as outs:
        output = outs.open(dst)
        torch.save(obj, output.handle)
        output.seal()
        with about(dst):
            locations = _written_locations(output.temp)
        outs.commit()
    report.storages = sum(locations.values())
    report.verified = "torch wrote it; ckpttool reads it back, storages on the mapped devices"
    report.changed = {f"* -> {location}": count for location, count in locations.items()}
    return report


def _written_locations(path: str) -> dict[str, int]:
    """Where the written storages restore to, read back by ckpttool's own reader."""
    from collections import Counter

    try:
        written = read_checkpoint(path)
    except CkptError as exc:
        raise VerificationError(f"the remapped file does not read back: {exc.message}") from None
    return dict(Counter(s.location for s in written.storages.values()))


def _restore(storage: Any, location: str) -> Any:
    return storage if location == "cpu" else storage.to(location)
