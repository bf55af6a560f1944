"""`scan` over several paths: every path gets an entry, one that cannot be read too.

As in `check`, an unreadable path is reported among the others, in the order given,
so that it never hides the verdict of a readable neighbour (nor they its failure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ckpttool.errors import CkptError
from ckpttool.ops.scan import FileScan, scan_file

UNREADABLE = "unreadable"  # the verdict an unreadable path has in every output


@dataclass
class UnreadableFile:
    """A path scan could not read at all (missing, truncated, not a checkpoint)."""

    path: str
    error: str  # the reason, without the path
    verdict: str = UNREADABLE


ScanEntry = FileScan | UnreadableFile


def scan_paths(paths: Sequence[str], allow: Mapping[str, str] | None = None) -> list[ScanEntry]:
    return [_scan_one(path, allow) for path in paths]


def _scan_one(path: str, allow: Mapping[str, str] | None) -> ScanEntry:
    try:
        return scan_file(path, allow)
    except CkptError as exc:
        # Another file's name stays in the message (a shard of a sharded folder).
        return UnreadableFile(path, exc.message if exc.path in (None, path) else str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename and exc.filename != path else ""
        return UnreadableFile(path, f"{where}{exc.strerror or exc}")
