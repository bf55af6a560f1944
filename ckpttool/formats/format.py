"""What a format declares about itself, and what the registry hands to it.

Each format module ends with one `Format`: its name, how it is recognised from a
`Probe` (the file's first bytes, size and kind, read once), how it is read into a
`Checkpoint`, and which pickles it holds (`Found`, for `scan`). `formats.registry`
keeps the list and is the only dispatcher; nothing else branches on format names.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ckpttool.checkpoint import Checkpoint
from ckpttool.errors import (
    CkptError,
    FileAccessError,
    FormatError,
    NotACheckpointError,
    PickleError,
    UnknownFormatError,
)
from ckpttool.formatnames import FormatName
from ckpttool.formats.ziparchive import ZipArchive, open_archive
from ckpttool.gcpause import gc_paused

if TYPE_CHECKING:  # annotations only: reading a torch zip imports no joblib reader
    from ckpttool.formats.joblib import JoblibRead
    from ckpttool.pickle import Decoded
    from ckpttool.pickle.judge import TorchScript

HEAD = 512


@dataclass
class Probe:
    """One look at a path: whether it is a folder, its size and first bytes; a zip's
    central directory is read at most once, by whichever format asks first."""

    path: str
    folder: bool
    size: int
    head: bytes
    registry: Registry
    memo: dict[str, Any] = field(default_factory=dict)  # what a format read while recognising it (its own types)
    _archive: ZipArchive | None = None
    # each reader's outcome on this probe (a checkpoint, or the error it raised): a scan's
    # check that the file reads takes the read a command already made, and the reverse
    reads: dict[Callable[[Probe], Checkpoint], Checkpoint | CkptError] = field(default_factory=dict)
    # the files of a checkpoint made of several (shards, rank files), each probed once: a
    # command that reads the checkpoint and scans it decodes each file's pickles once
    members: dict[str, Probe] = field(default_factory=dict)

    def archive(self) -> ZipArchive:
        if self._archive is None:
            self._archive = open_archive(self.path)
        return self._archive

    def member(self, path: str) -> Probe:
        """A file of this checkpoint, probed once (raises as `probe` does)."""
        found = self.members.get(path)
        if found is None:
            found = self.members[path] = probe(path, self.registry)
        return found


def read_once(probe: Probe, read: Callable[[Probe], Checkpoint]) -> Checkpoint:
    """`read(probe)`, run at most once per probe: later calls get the same checkpoint (or
    the same error) without decoding the file again."""
    outcome = probe.reads.get(read)
    if outcome is None:
        try:
            with gc_paused():
                outcome = read(probe)
        except CkptError as exc:
            outcome = exc
        probe.reads[read] = outcome
    if isinstance(outcome, CkptError):
        raise outcome
    return outcome


def probe(path: str, registry: Registry) -> Probe:
    """Raises when `path` is missing, unreadable or an empty file."""
    if os.path.isdir(path):
        return Probe(path, True, 0, b"", registry)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEAD)
    except FileNotFoundError:
        raise FileAccessError("no such file", path=path) from None
    except OSError as exc:
        raise FileAccessError(f"cannot read: {exc.strerror}", path=path) from None
    if size == 0:
        raise NotACheckpointError("empty file: not a checkpoint", path=path)
    return Probe(path, False, size, head, registry)


class Registry(Protocol):
    """What formats made of other checkpoints (shards, a folder's file) call back into."""

    def identify(self, path: str, scanning: bool = False) -> tuple[Format, Probe]: ...

    def recognise(self, looked: Probe, scanning: bool = False) -> Format: ...


@dataclass
class Found:
    """What a file holds for `scan`: its pickles by name, problems that make the scan fail
    closed, notes that are no finding, and a TorchScript archive's classes."""

    format: FormatName | None = None
    pickles: list[tuple[str, Decoded]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    members: int = 0  # container members and streams read
    torchscript: TorchScript | None = None

    def add(self, other: Found) -> None:
        self.pickles.extend(other.pickles)
        self.problems.extend(other.problems)
        self.notes.extend(other.notes)

    def add_member(self, parent: Probe, path: str, label: str, container: str | None = None) -> None:
        """Scan a file of a checkpoint made of several (a shard, a rank file) as its own
        format scans it; its pickles and problems are named `label:...`. A member of the
        `container`'s own format is a problem, not scanned: an index naming an index (or
        itself) would never end."""
        try:
            member = parent.member(path)
            fmt = parent.registry.recognise(member, scanning=True)
            if fmt.name == container:
                raise FormatError(f"names another {container} checkpoint, not a file of its own", path=path)
            sub = fmt.scan(member)
        except CkptError as exc:
            self.problems.append(f"{label}: {exc.message}")
            return
        self.problems.extend(f"{label}: {p}" for p in sub.problems)
        self.pickles.extend((f"{label}:{name}", d) for name, d in sub.pickles)

    def add_joblib(self, name: str, read: JoblibRead | None) -> None:
        """joblib's own reading of a pickle that decoded as a whole (it may differ)."""
        if read is not None:
            self.pickles.extend((name + label, decoded) for label, decoded in read.pickles)
            if read.problem:
                self.problems.append(f"{name}: {read.problem}")

    def summarise(self) -> Found:
        if not self.pickles and not self.problems:
            self.notes.append(f"no pickle in its {self.members} member(s): nothing in it runs code when loaded")
        return self

    def failure(self, name: str, exc: PickleError) -> None:
        """A pickle that did not decode: what it held up to the error still counts."""
        if exc.partial is not None:
            self.pickles.append((f"{name} (up to the error)", exc.partial))
        self.problems.append(f"{name}: {exc.message}")

    def guard(self, action: Callable[[], Checkpoint], keep_anomalies: bool = False) -> None:
        """Run a reader: what torch would refuse (a bad storage id, a record of the wrong
        size, a view past its storage) becomes a problem, and what it decoded still counts."""
        try:
            checkpoint = action()
        except PickleError as exc:
            self.failure("pickle", exc)
        except CkptError as exc:
            self.problems.append(f"unreadable: {exc.message}")
        else:
            if keep_anomalies:
                self.problems.extend(checkpoint.anomalies)


def no_checkpoint(probe: Probe) -> Checkpoint:
    """The read of a format that holds pickles but no checkpoint (a plain archive)."""
    raise UnknownFormatError(not_a_checkpoint(probe.head), path=probe.path)


def not_a_checkpoint(head: bytes) -> str:
    if head.startswith(b"\x89PNG"):
        return "a PNG image, not a checkpoint"
    text = text_start(head)
    if text is not None:
        return f"not a checkpoint: it is text, starting {text!r}"
    return "not a checkpoint: no zip, safetensors, tar or pickle signature"


def text_start(head: bytes, shown: int = 40) -> str | None:
    """The first characters of the first line when `head` reads as UTF-8 text (printable
    characters and line breaks, at most a character cut at the end); else None."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not only a character cut by the end of the head
            return None
        text = head[: exc.start].decode("utf-8")
    if not text.strip() or not all(c.isprintable() or c in "\n\r\t" for c in text):
        return None
    first = text.strip().splitlines()[0]
    return first if len(first) <= shown else first[: shown - 3] + "..."


@dataclass(frozen=True)
class Format:
    """One format, declared once by its module.

    `scan_only` formats (plain archives, numpy files, compressed streams) hold pickles but
    no checkpoint: reading skips them, and scanning, which opens every container, tries
    them first. `kind` refines the name from content (an index of safetensors shards)."""

    name: FormatName
    recognise: Callable[[Probe], bool]
    pickles: Callable[[Probe], Found]
    read: Callable[[Probe], Checkpoint] = no_checkpoint
    scan_only: bool = False
    kind: Callable[[Probe], FormatName] | None = None

    def kind_of(self, probe: Probe) -> FormatName:
        return self.kind(probe) if self.kind is not None else self.name

    def open(self, probe: Probe) -> Checkpoint:
        """The checkpoint's metadata; no tensor data is read, nothing executed."""
        try:
            return read_once(probe, self.read)
        except PermissionError as exc:
            raise FileAccessError(f"cannot read: {exc.strerror}", path=probe.path) from None

    def scan(self, probe: Probe) -> Found:
        """Every pickle the file holds, decoded inertly, with the problems met on the way."""
        found = self.pickles(probe)
        if found.format is None:  # a folder's file already named its own
            found.format = self.kind_of(probe)
        return found
