"""What a killed run left behind, found and removed by the next run writing beside it.

A stop signal removes a run's temporary outputs (`ckpttool.atomic`), but SIGKILL, the OOM
killer or a power cut leave them: hidden `.NAME.OWNER.RANDOM.ckpttool-tmp` files and
folders, `reference train`'s `.NAME.OWNER.RANDOM.ckpttool-staging` folders. OWNER names
the process that made them: a hash of the host's name, the pid, and the process's start
time (from /proc), so that a pid the system has since given to another process is not
mistaken for the writer. A leftover is removed only when its writer ran on this host and
is gone (no such process, a zombie, or another process under its pid); a live writer's
files, another host's (a shared filesystem) and names in no known form are left alone.

A backup a killed landing left (`...ckpttool-tmp.previous`, the file the output was about
to replace) is put back when nothing took its place, removed otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
from functools import cache

BACKUP_SUFFIX = ".previous"
_OWNER = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)")
_SHOWN = 3


@cache
def owner() -> str:
    """This process, as temporary names carry it: `HOST-PID-START`, no dots."""
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    return f"{host}-{os.getpid()}-{_start_time(os.getpid()) or 0}"


def temp_prefix(name: str) -> str:
    """The prefix of a temporary name for the output `name` (before mkstemp's random part)."""
    return f".{name}.{owner()}."


def remove_leftovers(folder: str, suffix: str) -> list[str]:
    """Remove every leftover in `folder` whose name ends with `suffix` and whose writer is
    gone; says so in one warning (one stderr line from the command line). Returns the names removed (or put back)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    done = [name for name in names if _clear(folder, name, suffix)]
    if done:
        more = f" and {len(done) - _SHOWN} more" if len(done) > _SHOWN else ""
        shown = ", ".join(done[:_SHOWN]) + more
        _say(f"ckpttool: removed {len(done)} temporary output(s) of a run that was killed, in {folder}: {shown}")
    return done


def _clear(folder: str, name: str, suffix: str) -> bool:
    backup = name.endswith(suffix + BACKUP_SUFFIX)
    stem = name.removesuffix(BACKUP_SUFFIX) if backup else name
    if not stem.endswith(suffix) or not stem.startswith(".") or _writer_alive(stem.removesuffix(suffix)):
        return False
    path = os.path.join(folder, name)
    with contextlib.suppress(FileNotFoundError):  # another run may clear it at the same time
        if backup:
            _restore(path, os.path.join(folder, stem.removesuffix(suffix)[1:].rsplit(".", 2)[0]))
        elif os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    return True


def _restore(backup: str, final: str) -> None:
    """The file a killed landing moved aside: back in place unless something replaced it."""
    if not os.path.lexists(final):
        os.replace(backup, final)
    elif os.path.isdir(backup) and not os.path.islink(backup):
        shutil.rmtree(backup)
    else:
        os.unlink(backup)


def _writer_alive(base: str) -> bool:
    """`base` is `.NAME.OWNER.RANDOM`; True unless OWNER is a process of this host that is gone."""
    parts = base[1:].rsplit(".", 2)
    found = _OWNER.fullmatch(parts[1]) if len(parts) == 3 else None
    if found is None or found["host"] != owner().split("-", 1)[0]:
        return True  # not a name this version writes, or another host's: not ours to judge
    pid, start = int(found["pid"]), int(found["start"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    now = _start_time(pid)
    return now is None or (now == start and not _zombie(pid))


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from the state on (the name before it may hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 and fields[19].isdigit() else None


def _zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and len(fields) > 0 and fields[0] in ("Z", "X")


def _say(line: str) -> None:
    """A warning on the `ckpttool` logger: the library prints nothing itself. With no
    logging set up (the command line), Python's last-resort handler writes it to stderr."""
    import logging  # only when there is something to say

    logging.getLogger("ckpttool").warning(line)
