"""Outputs appear whole or not at all, also when the process is told to stop.

Each output is written to a hidden temporary file in the destination's folder (so
the final rename stays on one filesystem), flushed to disk, checked by the caller,
and only then renamed into place. Any failure removes every temporary file (what a
killed run could not remove, the next run writing into the folder does); an
existing destination is replaced only when the caller allows it, and never when it
is the source itself.

A stop signal (see `ckpttool.signals`) unwinds like any other failure, so the same
cleanup runs. The few steps that must not be cut in half (a temporary file created
and recorded, temporary files removed, renames done or undone) hold signals until
they are done.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from ckpttool.errors import FileAccessError, OutputExistsError, UsageError
from ckpttool.leftovers import remove_leftovers, temp_prefix
from ckpttool.signals import held

TEMP_SUFFIX = ".ckpttool-tmp"


@dataclass
class PendingOutput:
    final: str
    temp: str
    handle: BinaryIO

    def seal(self) -> None:
        """Flush to the file: what is verified next is what the rename will publish.
        Like torch.save and safetensors, no fsync: durability is the filesystem's."""
        self.handle.flush()
        os.fchmod(self.handle.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600 files
        self.handle.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass
class OutputSet:
    """Several files that land together (shards and their index), or not at all."""

    sources: list[str]
    force: bool
    pending: list[PendingOutput] = field(default_factory=list)

    def check_destination(self, final: str) -> None:
        if os.path.isdir(final):
            raise UsageError(f"{final} is a folder; name the output file")
        for source in self.sources:
            if os.path.exists(final) and os.path.exists(source) and os.path.samefile(final, source):
                raise UsageError(f"{final} is the source itself; the source is never modified")
        if os.path.exists(final) and not self.force:
            raise OutputExistsError(f"{final} exists; pass --force to replace it")
        folder = os.path.dirname(os.path.abspath(final))
        if not os.path.isdir(folder):
            raise FileAccessError(f"folder {folder} does not exist")

    def open(self, final: str) -> PendingOutput:
        self.check_destination(final)
        folder, name = os.path.split(os.path.abspath(final))
        clear_leftovers(folder)
        with held():  # a temporary file exists only once it is recorded for removal
            fd, temp = tempfile.mkstemp(prefix=temp_prefix(name), suffix=TEMP_SUFFIX, dir=folder)
            pending = PendingOutput(final, temp, os.fdopen(fd, "w+b"))
            self.pending.append(pending)
        return pending

    def commit(self) -> None:
        """Rename every output into place; if one rename fails, undo the others and put
        back any file they replaced, so the set lands whole or not at all."""
        for output in self.pending:
            if not output.handle.closed:
                output.seal()
        replace_all([(output.temp, output.final) for output in self.pending])
        self.pending.clear()

    def discard(self) -> None:
        with held():
            for output in self.pending:
                with contextlib.suppress(OSError):
                    output.handle.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(output.temp)
            self.pending.clear()


def clear_leftovers(folder: str) -> None:
    """Remove what killed runs left in `folder` (see `ckpttool.leftovers`). Each output of a
    set looks again; only the first finds any, so a run says so once."""
    remove_leftovers(folder, TEMP_SUFFIX)


def replace_all(moves: list[tuple[str, str]]) -> None:
    """`os.replace` each (temporary, final) pair, files or folders (a DCP checkpoint); on any
    failure or signal the finals done so far are removed and what they replaced put back."""
    backups: list[tuple[str, str]] = []
    done: list[str] = []
    try:
        for temp, final in moves:
            with held():  # each rename is recorded before a signal can undo the set
                if os.path.exists(final):
                    backup = temp + ".previous"
                    os.replace(final, backup)
                    backups.append((backup, final))
                os.replace(temp, final)
                done.append(final)
    except BaseException:
        with held():
            for final in done:
                _remove(final)
            for backup, final in backups:
                with contextlib.suppress(OSError):
                    os.replace(backup, final)
        raise
    with held():  # landed: a signal now ends the command after the old files are gone
        for backup, _ in backups:
            _remove(backup)


def _remove(path: str) -> None:
    """A file, or a whole folder, gone; what cannot be removed is left to the next run."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


@contextlib.contextmanager
def created_folders(folder: str) -> Iterator[None]:
    """`folder` and its missing parents created as `mkdir -p` would, and removed again, as
    far as they were created here and are still empty, when the block fails."""
    missing: list[str] = []
    path = os.path.abspath(folder)
    while path and not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    created: list[str] = []
    try:
        with held():  # each folder is recorded as soon as it exists, to be removed on failure
            for path in reversed(missing):  # outermost first
                with contextlib.suppress(FileExistsError):  # made meanwhile (another rank): not ours
                    os.mkdir(path)
                    created.append(path)
        yield
    except BaseException:
        with held():
            for path in reversed(created):  # innermost first; a folder others wrote into stays
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        raise


@contextlib.contextmanager
def output_set(sources: list[str], force: bool) -> Iterator[OutputSet]:
    """Yields an OutputSet; on any exception its temporary files are removed."""
    outputs = OutputSet(sources, force)
    try:
        yield outputs
    except OSError as exc:
        finals = [o.final for o in outputs.pending]
        outputs.discard()
        raise _named_for_destination(exc, finals) from exc
    except BaseException:
        outputs.discard()
        raise


# Errors that only writing causes: with no file named, they are about the output.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})


def _named_for_destination(exc: OSError, finals: list[str]) -> OSError:
    """An error about a hidden temporary file (or an unnamed write error) as the same error
    (same type and errno) about the destination the user named; the temporary file is gone
    by the time they read the message."""
    temp = str(exc.filename or "")
    if temp.endswith(TEMP_SUFFIX):
        folder, name = os.path.split(temp)
        final = os.path.join(folder, name[1:].rsplit(".", 3)[0])  # `.NAME.<owner>.<random>.ckpttool-tmp`
    elif exc.filename is None and exc.errno in _WRITE_ERRNOS and finals:
        final = ", ".join(finals)
    else:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), final)
