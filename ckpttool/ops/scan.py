"""Security report: every global a file's pickles name, how each is used, a verdict.

The verdict (`ckpttool.pickle.judge`) answers one question: can loading this file with
`pickle.load` or `torch.load(weights_only=False)` run something not known to be
harmless? `safe`, `needs-allowlist`, `unknown-call` or `dangerous`, each with one
meaning. Apart from it, `weights_only` says what `torch.load(weights_only=True)` does
with the file (`ckpttool.pickle.weightsonly`): a refusal there is reported, not danger.
`__torch__` classes are unknown calls (torch.jit.load runs their code) until allowed;
in a TorchScript archive, allowing its top-level class trusts them all (`judge.TorchScript`).

Every pickle is scanned: all `.pkl` records of an archive under any root, every
stacked pickle of the legacy formats, every pickle concatenated in a raw file.
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ckpttool.checkpoint import Checkpoint
from ckpttool.errors import CkptError, PickleError, UnknownFormatError
from ckpttool.formats import (
    LEGACY,
    LEGACY_TAR,
    SAFETENSORS,
    TORCHSCRIPT,
    ZIP,
    detect,
    is_sharded,
)
from ckpttool.formats.containers import TAR as CONTAINER_TAR
from ckpttool.formats.containers import ZIP as CONTAINER_ZIP
from ckpttool.formats.containers import (
    Found,
    container_kind,
    is_legacy_tar,
    refuse_sealed,
    scan_container,
    scan_tar_members,
    scan_zip_archive,
    scan_zip_members,
    trailing_data,
)
from ckpttool.formats.legacy import is_tar, read_legacy, read_legacy_tar
from ckpttool.formats.safetensors import read_safetensors
from ckpttool.formats.sharded import find_index, load_index, shard_path
from ckpttool.formats.torchzip import is_torchscript, pickle_names, read_pickle, read_torch_zip
from ckpttool.formats.ziparchive import ZipArchive, open_archive
from ckpttool.pickle import Decoded, decode
from ckpttool.pickle.judge import (
    DANGEROUS,
    NEEDS_ALLOWLIST,
    SAFE,
    UNKNOWN_CALL,
    Judgement,
    TorchScript,
    Verdict,
    is_torchscript_class,
    judge,
)
from ckpttool.pickle.judge import GlobalJudgement as GlobalReport
from ckpttool.pickle.objects import Call, Global
from ckpttool.pickle.weightsonly import WeightsOnly, emulate, not_applicable

__all__ = ["DANGEROUS", "NEEDS_ALLOWLIST", "SAFE", "UNKNOWN_CALL", "FileScan", "GlobalReport", "scan_file"]


@dataclass
class FileScan:
    path: str
    format: str
    verdict: Verdict
    pickles: int
    globals: list[GlobalReport] = field(default_factory=list)
    weights_only: WeightsOnly = field(default_factory=lambda: WeightsOnly("loads"))
    allowlist: str | None = None  # for needs-allowlist and unknown-call files
    imports: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    allowed: dict[str, str] = field(default_factory=dict)  # names this run allowed that the file uses, and where
    notes: list[str] = field(default_factory=list)  # facts that are no finding (a zip with no pickle)


@dataclass
class _Collected:
    format: str
    pickles: list[tuple[str, Decoded]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    torchscript: TorchScript | None = None

    def add(self, found: Found) -> None:
        self.pickles.extend(found.pickles)
        self.problems.extend(found.problems)
        self.notes.extend(found.notes)


def scan_file(path: str, allow: Mapping[str, str] | None = None) -> FileScan:
    """Scan one file or sharded folder; raises CkptError only when it is not a checkpoint at all.

    `allow` maps `module.name` to where the user allowed it (`--allow`, a pyproject.toml):
    those names count as vetted for this scan.
    """
    collected = _collect(path)
    judgement = judge((d for _, d in collected.pickles), allow, collected.torchscript)
    problems = collected.problems + judgement.problems
    verdict = DANGEROUS if problems else judgement.verdict
    weights_only = _weights_only(collected, judgement)
    # No allowlist makes torch.load(weights_only=True) read TorchScript: no line to print.
    loadable = collected.torchscript is None and verdict in (NEEDS_ALLOWLIST, UNKNOWN_CALL)
    allowlist = weights_only.allowlist if loadable else None
    allowed = {g.qualname: g.allowed_by for g in judgement.globals if g.allowed_by}
    return FileScan(
        path,
        collected.format,
        verdict,
        len(collected.pickles),
        judgement.globals,
        weights_only,
        allowlist,
        weights_only.imports if allowlist else [],
        problems,
        allowed,
        notes=collected.notes,
    )


# -- finding every pickle ---------------------------------------------------------------


def _collect(path: str) -> _Collected:
    container = _container(path)
    if container is not None:  # plain archives, npy, compressed streams: pickles found by content
        collected = _Collected(container)
        collected.add(scan_container(path, container))
        return collected
    fmt = detect(path)
    collected = _Collected(fmt)
    if is_sharded(fmt):
        _collect_sharded(path, collected)
    elif fmt == SAFETENSORS:
        read_safetensors(path)  # validates the header; there is no pickle to scan
    elif fmt in (ZIP, TORCHSCRIPT):
        _collect_zip(path, collected)
    elif fmt in (LEGACY, LEGACY_TAR):
        reader = read_legacy if fmt == LEGACY else read_legacy_tar
        _guarded(collected, lambda: reader(path, collected.pickles), keep_anomalies=True)
        if fmt == LEGACY_TAR:
            collected.add(scan_tar_members(path, _LEGACY_TAR_MEMBERS))
    else:
        _collect_raw(path, collected)
    return collected


_LEGACY_TAR_MEMBERS = {"sys_info", "storages", "tensors", "pickle"}


def _container(path: str) -> str | None:
    """The container kind scan opens by content for `path`, or None for torch's own formats
    (a zip with data.pkl, a tar with torch's members), safetensors and raw pickles."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        head = f.read(512)
    refuse_sealed(head, path)
    kind = container_kind(head)
    if kind is None and is_tar(head) and not is_legacy_tar(path):
        kind = CONTAINER_TAR
    return kind  # a zip is told apart once its central directory is read (`_collect_zip`)


def _guarded(collected: _Collected, action: Callable[[], Checkpoint], keep_anomalies: bool = False) -> None:
    """Run a reader: what torch would refuse (a bad storage id, a record of the wrong size,
    a view past its storage) becomes a problem, and what it decoded still counts."""
    try:
        checkpoint = action()
    except PickleError as exc:
        _record_failure(collected, "pickle", exc)
    except CkptError as exc:
        collected.problems.append(f"unreadable: {exc.message}")
    else:
        if keep_anomalies:
            collected.problems.extend(checkpoint.anomalies)


def _record_failure(collected: _Collected, name: str, exc: PickleError) -> None:
    if exc.partial is not None:
        collected.pickles.append((f"{name} (up to the error)", exc.partial))
    collected.problems.append(f"{name}: {exc.message}")


def _collect_zip(path: str, collected: _Collected) -> None:
    archive = open_archive(path)
    if archive.record("data.pkl") is None:  # not torch's layout: a plain zip (an npz, a download)
        collected.format = CONTAINER_ZIP
        collected.add(scan_zip_archive(archive))
        return
    for name in pickle_names(archive):
        try:
            decoded = read_pickle(archive, archive.entries[name])
            collected.pickles.append((name, decoded))
            extra = trailing_data(decoded, archive.entries[name].size)
            if extra:
                collected.problems.append(f"{name}: {extra}")
        except PickleError as exc:
            _record_failure(collected, name, exc)
        except CkptError as exc:
            collected.problems.append(f"{name}: {exc.message}")
    roots = archive.roots()
    if len(roots) > 1:
        collected.problems.append(f"records under {len(roots)} root folders: {', '.join(roots)}")
    collected.problems.extend(archive.anomalies)
    collected.add(scan_zip_members(archive, set(pickle_names(archive))))
    if is_torchscript(archive):
        collected.torchscript = _torchscript(archive, collected.pickles)
        if collected.torchscript.top is None:  # torch.jit.save always pickles the module itself
            collected.problems.append(
                "TorchScript archive whose data.pkl holds no TorchScript module, which torch.jit.save never "
                "writes: torch.jit.load still compiles from code/ what its pickles name"
            )
    if not collected.problems:
        _guarded(collected, lambda: read_torch_zip(path, archive))


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


def _collect_raw(path: str, collected: _Collected) -> None:
    """Every pickle in the file, one after another, as a stream of loads would see them."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start, index = 0, 0
            while start < size:
                name = f"pickle {index}" if index else "pickle"
                try:
                    decoded = decode(data, start=start, source=path)
                except PickleError as exc:
                    if index == 0 and not _found_anything(exc) and data[0] != 0x80:
                        raise UnknownFormatError(f"not a checkpoint ({exc.message})", path=path) from None
                    _record_failure(collected, name, exc)
                    return
                collected.pickles.append((name, decoded))
                start, index = decoded.end, index + 1


def _found_anything(exc: PickleError) -> bool:
    return exc.partial is not None and bool(exc.partial.globals)


def _collect_sharded(path: str, collected: _Collected) -> None:
    index_path = (find_index(path) if os.path.isdir(path) else path) or path
    index = load_index(index_path)
    folder = os.path.dirname(os.path.abspath(index_path))
    for shard in dict.fromkeys(index["weight_map"].values()):
        try:
            sub = _collect(shard_path(folder, shard, index_path))
        except CkptError as exc:
            collected.problems.append(f"{shard}: {exc.message}")
            continue
        collected.problems.extend(f"{shard}: {p}" for p in sub.problems)
        collected.pickles.extend((f"{shard}:{name}", d) for name, d in sub.pickles)


# -- what torch.load(weights_only=True) does ------------------------------------------------

_TORCH_LOADS = (ZIP, LEGACY, LEGACY_TAR, "sharded-bin")
# The pickles torch.load unpickles, by the names the readers give them: a zip's
# `<root>/data.pkl`, the stacked pickles of a legacy file, the members of a legacy tar.
# Anything else `_collect` found by content is scanned but never read by torch.load.
_TORCH_PICKLE = re.compile(
    r"[^/]+/data\.pkl|magic number|protocol version|sys_info|main pickle|storage keys|pickle"
    r"|(storages|tensors): (count|header \d+|views)"
)


def _weights_only(collected: _Collected, judgement: Judgement) -> WeightsOnly:
    fmt = collected.format
    if fmt in (SAFETENSORS, "sharded-safetensors"):
        return not_applicable("safetensors: read it with safetensors.torch.load_file, not torch.load")
    if fmt == TORCHSCRIPT:
        refusal: str | None = "a TorchScript archive, which torch.load(weights_only=True) refuses"
    elif fmt not in _TORCH_LOADS:
        refusal = f"not a file torch.save writes ({fmt}): torch.load reads zip archives and legacy files only"
    else:
        refusal = None
    pickles = [d for name, d in collected.pickles if refusal or _torch_reads(name)]
    return emulate(pickles, judgement, refusal)


def _torch_reads(name: str) -> bool:
    base = name.split(":", 1)[1] if ":" in name and not name.startswith(("storages:", "tensors:")) else name
    return _TORCH_PICKLE.fullmatch(base.removesuffix(" (up to the error)")) is not None
