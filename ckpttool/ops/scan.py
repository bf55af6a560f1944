"""Security report: every global a file's pickles name, how each is used, a verdict.

Verdicts, per global and per file:
- `safe`: on torch's `weights_only` allowlist;
- `needs-allowlist`: other globals used only as classes that are instantiated and
  given state (a pickled `nn.Module`), or only referenced; allowlisting them with
  `torch.serialization.add_safe_globals` makes `torch.load(weights_only=True)` work;
- `dangerous`: a known gadget, a module torch blocks, any other callable the pickle
  calls, a name computed at load time, an opcode or container use torch refuses, or
  a scan that stopped at an error or a limit (it fails closed).

Every pickle is scanned: all `.pkl` records of an archive under any root, every
stacked pickle of the legacy formats, every pickle concatenated in a raw file.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ckpttool.checkpoint import Checkpoint
from ckpttool.errors import CkptError, PickleError, UnknownFormatError, ZipFormatError
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
    scan_zip_members,
    trailing_data,
)
from ckpttool.formats.legacy import is_tar, read_legacy, read_legacy_tar
from ckpttool.formats.safetensors import read_safetensors
from ckpttool.formats.sharded import find_index, load_index, shard_path
from ckpttool.formats.torchzip import is_torchscript, pickle_names, read_pickle, read_torch_zip
from ckpttool.formats.ziparchive import is_zip, open_archive
from ckpttool.pickle import Decoded, decode
from ckpttool.pickle.allowlist import is_allowed, is_blocked, is_known_dangerous
from ckpttool.pickle.machine import USE_BUILD, USE_CALL, USE_INSTANTIATE, USE_REFERENCE, TrackedGlobal

SAFE = "safe"
NEEDS_ALLOWLIST = "needs-allowlist"
DANGEROUS = "dangerous"
_RANK = {SAFE: 0, NEEDS_ALLOWLIST: 1, DANGEROUS: 2}


@dataclass
class GlobalReport:
    module: str
    name: str
    uses: list[str]
    verdict: str
    reason: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass
class FileScan:
    path: str
    format: str
    verdict: str
    pickles: int
    globals: list[GlobalReport] = field(default_factory=list)
    allowlist: str | None = None
    imports: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts that are no finding (a zip with no pickle)


@dataclass
class _Collected:
    format: str
    pickles: list[tuple[str, Decoded]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, found: Found) -> None:
        self.pickles.extend(found.pickles)
        self.problems.extend(found.problems)
        self.notes.extend(found.notes)


def scan_file(path: str) -> FileScan:
    """Scan one file or sharded folder; raises CkptError only when it is not a checkpoint at all."""
    collected = _collect(path)
    reports = _global_reports(collected.pickles)
    problems = collected.problems + [p for _, d in collected.pickles for p in _pickle_problems(d)]
    verdict = max([r.verdict for r in reports] + [SAFE], key=_RANK.__getitem__)
    if problems:
        verdict = DANGEROUS
    allowlist, imports = _allowlist_line(reports) if verdict == NEEDS_ALLOWLIST else (None, [])
    return FileScan(
        path,
        collected.format,
        verdict,
        len(collected.pickles),
        reports,
        allowlist,
        imports,
        problems,
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
    if kind is None and is_zip(head):
        kind = None if open_archive(path).record("data.pkl") is not None else CONTAINER_ZIP
    elif kind is None and is_tar(head):
        kind = None if is_legacy_tar(path) else CONTAINER_TAR
    return kind


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
    if archive.record("data.pkl") is None:
        raise ZipFormatError(f"zip archive without {archive.root}/data.pkl: not a torch checkpoint", path=path)
    if is_torchscript(archive):
        collected.problems.append(
            "TorchScript archive: torch.jit.load compiles and runs its code/ (CVE-2025-32434); "
            "torch.load(weights_only=True) refuses it"
        )
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
    if not collected.problems:
        _guarded(collected, lambda: read_torch_zip(path, archive))


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


# -- judging ------------------------------------------------------------------------------


def _global_reports(pickles: list[tuple[str, Decoded]]) -> list[GlobalReport]:
    uses: dict[tuple[str, str], set[str]] = {}
    for _, decoded in pickles:
        for ref in decoded.globals:
            seen = ref.uses if isinstance(ref, TrackedGlobal) else set()
            uses.setdefault((ref.module, ref.name), set()).update(seen)
    return [_judge(module, name, used) for (module, name), used in uses.items()]


def _judge(module: str, name: str, used: set[str]) -> GlobalReport:
    qualname = f"{module}.{name}"
    listed = sorted(used - {USE_BUILD}) or [USE_REFERENCE]
    if is_blocked(module):
        return GlobalReport(module, name, listed, DANGEROUS, f"module {module} is blocked by torch")
    if is_allowed(qualname):
        return GlobalReport(module, name, listed, SAFE, "on torch's weights_only allowlist")
    if is_known_dangerous(module, qualname):
        return GlobalReport(module, name, listed, DANGEROUS, "a known code-execution gadget")
    if USE_CALL in used:
        return GlobalReport(module, name, listed, DANGEROUS, "called by the pickle and not allowlisted")
    reason = "instantiated and given state" if USE_INSTANTIATE in used else "referenced"
    return GlobalReport(module, name, listed, NEEDS_ALLOWLIST, f"{reason}; not on torch's allowlist")


def _pickle_problems(decoded: Decoded) -> list[str]:
    problems = list(decoded.problems)
    for opcode, offset in decoded.foreign_opcodes.items():
        problems.append(f"opcode {opcode} (pickle byte {offset}) is refused by torch.load(weights_only=True)")
    return problems


def _allowlist_line(reports: list[GlobalReport]) -> tuple[str, list[str]]:
    """The add_safe_globals call that lets torch.load(weights_only=True) read the file."""
    needed = sorted(r.qualname for r in reports if r.verdict == NEEDS_ALLOWLIST)
    names, imports = [], set()
    for qualname in needed:
        module, _, name = qualname.rpartition(".")
        if module in ("__main__", "builtins"):
            names.append(name)  # defined (or built in) where torch.load is called
        else:
            names.append(qualname)
            imports.add(module)
    return f"torch.serialization.add_safe_globals([{', '.join(names)}])", sorted(imports)
