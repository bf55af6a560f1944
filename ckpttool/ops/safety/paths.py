"""`scan` over several paths: every path gets an entry, one that cannot be read too.

As in `check`, an unreadable path is reported among the others, in the order given,
so that it never hides the verdict of a readable neighbour (nor they its failure).
A folder is one entry per file under it (`safety/folder.py`); there, a file that holds no
pickle (config.json, a tokenizer, a README) is an entry too, `safe`, saying so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ckpttool.errors import CkptError, NotACheckpointError
from ckpttool.formatnames import NoPickleKind
from ckpttool.formats import OpenedFile
from ckpttool.formats.containers import native_code
from ckpttool.gcpause import each_file
from ckpttool.ops.safety.folder import FolderItem, folder_items, same_path
from ckpttool.ops.safety.scan import DANGEROUS, SAFE, FileScan, scan_file, scan_opened
from ckpttool.pickle.weightsonly import not_applicable

Unreadable = Literal["unreadable"]  # the verdict an unreadable path has in every output
UNREADABLE: Unreadable = "unreadable"


@dataclass
class UnreadableFile:
    """A path scan could not read at all (missing, truncated, not a checkpoint)."""

    path: str
    error: str  # the reason, without the path
    verdict: Unreadable = UNREADABLE


ScanEntry = FileScan | UnreadableFile


NO_PICKLE_FORMATS = ("text", "data")  # what a folder's files that are no checkpoint are called


def scan_paths(paths: Sequence[str], allow: Mapping[str, str] | None = None) -> list[ScanEntry]:
    """One entry per file, in order: each path given, every file under a folder, an unreadable path too."""
    groups = each_file(
        paths, lambda path: scan_folder(path, allow) if os.path.isdir(path) else [_scan_one(path, allow)]
    )
    return [entry for group in groups for entry in group]


def scan_folder(root: str, allow: Mapping[str, str] | None = None, opened: OpenedFile | None = None) -> list[ScanEntry]:
    """One entry per file under `root`; one unreadable entry for the folder when none of
    its files is a checkpoint or holds a pickle (nothing there to call safe). `opened`:
    `root` as a command already opened it, scanned as it is when `root` is the checkpoint
    (a DCP or DeepSpeed folder): its probe and decoded pickles are not made again."""
    reuse = opened if opened is not None and same_path(opened.path, root) else None
    entries = each_file(folder_items(root, reuse), lambda item: _scan_item(item, allow, reuse))
    if all(isinstance(e, FileScan) and e.format in NO_PICKLE_FORMATS and e.verdict == SAFE for e in entries):
        count = f"{len(entries)} file(s), text or other data" if entries else "no file"
        why = f"no file in the folder holds a checkpoint or a pickle ({count}): not a checkpoint"
        return [UnreadableFile(root, why)]
    return entries


def _scan_item(item: FolderItem, allow: Mapping[str, str] | None, root: OpenedFile | None) -> ScanEntry:
    if item.kind == "skipped":
        return UnreadableFile(item.path, item.reason)
    if item.kind == "checkpoint" and root is not None and same_path(item.path, root.path):
        return _scan_one(root, allow)
    entry = _scan_one(item.path, allow, in_folder=item.kind == "file")
    if item.target:  # the content is the target's: say which file that is
        link = f"a symbolic link to {item.target}"
        if isinstance(entry, FileScan):
            entry.notes.insert(0, f"{link}: its content is scanned")
        else:
            entry.error = f"{link}: {entry.error}"
    return entry


def _no_pickle(path: str, error: str) -> FileScan:
    """A file beside the checkpoint that no format recognises: pickle.load and torch.load
    fail on its first bytes before calling anything. A shared library is another matter:
    whatever loads it (a package's kernels, torch.ops.load_library) runs its code."""
    head = _head(path)
    kind: NoPickleKind = "text" if _is_text(head) else "data"
    refusal = not_applicable("not a checkpoint: torch.load refuses it")
    native = native_code(head)
    if native is not None:
        problem = f"{native}: whatever loads it from here runs its code"
        return FileScan(path, kind, DANGEROUS, 0, weights_only=refusal, problems=[problem])
    why = "empty" if error.startswith("empty") else "no zip, safetensors, tar or pickle signature"
    note = f"{kind} with no pickle ({why}): nothing in it runs code when loaded"
    return FileScan(path, kind, SAFE, 0, weights_only=refusal, notes=[note])


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(4096)
    except OSError:
        return b""


def _is_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a character cut at the end of the head is text still
        return exc.start >= len(head) - 3 and b"\0" not in head
    return b"\0" not in head


def _scan_one(source: str | OpenedFile, allow: Mapping[str, str] | None, in_folder: bool = False) -> ScanEntry:
    path = source.path if isinstance(source, OpenedFile) else source
    try:
        return scan_opened(source, allow) if isinstance(source, OpenedFile) else scan_file(path, allow)
    except CkptError as exc:
        if in_folder and isinstance(exc, NotACheckpointError):
            return _no_pickle(path, exc.message)
        # Another file's name stays in the message (a shard of a sharded folder).
        return UnreadableFile(path, exc.message if exc.path in (None, path) else str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename and exc.filename != path else ""
        return UnreadableFile(path, f"{where}{exc.strerror or exc}")
