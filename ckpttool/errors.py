"""One error tree for everything ckpttool can refuse.

Every failure a user can cause (a missing file, a corrupt archive, a hostile pickle,
a bad option value) is a `CkptError`. The CLI turns each into exit code 2 and one
stderr line; library users catch `CkptError`. Messages say what is wrong, where
(file, record, tensor key, byte offset) and, where it helps, what to do next.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the pickle machine raises these errors
    from ckpttool.pickle.state import Decoded

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2


class CkptError(Exception):
    """Base of every error ckpttool raises on purpose."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        if self.path:
            return f"{self.path}: {self.message}"
        return self.message


@contextlib.contextmanager
def about(path: str) -> Iterator[None]:
    """Errors raised inside name `path` when they do not name a file already."""
    try:
        yield
    except CkptError as exc:
        if exc.path is None:
            exc.path = path
        raise


class UsageError(CkptError):
    """An option or argument that cannot be honoured."""


class FileAccessError(CkptError):
    """The file cannot be opened or read (missing, a directory, no permission)."""


class FormatError(CkptError):
    """The bytes are not a checkpoint ckpttool knows, or not a valid one."""


class UnknownFormatError(FormatError):
    """Nothing in the file's content matches a known checkpoint format."""


class NotACheckpointError(UnknownFormatError):
    """No format recognises the file at all (empty, text, other data): no pickle in it to run."""


class ZipFormatError(FormatError):
    """The zip container is truncated or inconsistent."""


class EncryptedError(ZipFormatError):
    """A zip record whose bytes are encrypted: nothing reads it, and nothing can scan it."""


class PickleError(FormatError):
    """The pickle stream is malformed: truncated, bad opcode, stack or memo misuse."""

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None):
        if offset is not None:
            message = f"{message} (pickle byte {offset})"
        super().__init__(message, path=path)
        self.offset = offset
        self.partial: Decoded | None = None  # what the machine decoded up to the failure, for scan


class LimitError(PickleError):
    """Decoding stopped at a safety limit (opcodes, memo, nesting, size)."""


class IntegrityError(FormatError):
    """A record whose bytes do not match the CRC-32 its archive recorded: changed after saving."""


class SafetensorsError(FormatError):
    """A safetensors header that the reference implementation would reject."""


class TensorLayoutError(FormatError):
    """A tensor whose shape, stride or offset does not fit its storage record."""


class WeightsNotFoundError(CkptError):
    """No weights root could be found, or `--root` names nothing usable."""


class UnsafeFileError(CkptError):
    """`--trust` was refused because the file scans as dangerous."""


class DangerousSourceError(UnsafeFileError):
    """A command that rewrites a file refused one that scans as dangerous: a finding (exit 1)."""

    exit_code = EXIT_FINDINGS


class VerificationError(CkptError):
    """What was written does not read back equal to the source; nothing was kept.

    A finding, not an unreadable input: exit code 1."""

    exit_code = EXIT_FINDINGS


class OutputExistsError(CkptError):
    """The destination exists and `--force` was not given."""


class ModelSpecError(CkptError):
    """A `--model` spec that cannot be imported or called."""


class DatasetError(CkptError):
    """A dataset that is not on disk or cannot be read."""
