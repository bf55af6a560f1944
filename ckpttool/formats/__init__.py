"""Format detection by content, and one entry point that reads any checkpoint.

The file name never decides the format: a raw pickle named `.bin`, a TorchScript
archive named `.pt` and a PNG renamed `.pth` are told apart by their bytes.
"""

from __future__ import annotations

import os

from ckpttool.checkpoint import Checkpoint
from ckpttool.errors import FileAccessError, FormatError, PickleError, UnknownFormatError
from ckpttool.formats.legacy import is_tar, read_legacy, read_legacy_tar, starts_with_magic
from ckpttool.formats.rawpickle import read_raw_pickle
from ckpttool.formats.safetensors import looks_like_safetensors, read_safetensors
from ckpttool.formats.sharded import find_index, is_index, read_sharded, sharded_format
from ckpttool.formats.torchzip import is_torchscript, read_torch_zip
from ckpttool.formats.ziparchive import is_zip, open_archive
from ckpttool.pickle.opcodes import NAMES

ZIP = "torch-zip"
TORCHSCRIPT = "torchscript"
LEGACY = "torch-legacy"
LEGACY_TAR = "torch-legacy-tar"
SAFETENSORS = "safetensors"
SHARDED = "sharded"  # detect() names the kind: sharded-safetensors or sharded-bin
RAW_PICKLE = "raw-pickle"
_HEAD = 512


def detect(path: str) -> str:
    """The format of `path`, from its content (and, for folders, their index file)."""
    fmt = _detect(path)
    if fmt == ZIP and is_torchscript(open_archive(path)):
        return TORCHSCRIPT
    if fmt == SHARDED:
        return sharded_format(find_index(path) or path if os.path.isdir(path) else path)
    return fmt


def is_sharded(fmt: str) -> bool:
    return fmt.startswith(SHARDED)


def _detect(path: str) -> str:
    if os.path.isdir(path):
        return _detect_folder(path)
    size = _size(path)
    if size == 0:
        raise UnknownFormatError("empty file: not a checkpoint", path=path)
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    if is_zip(head):
        return ZIP
    if looks_like_safetensors(head, size):
        return SAFETENSORS
    if is_tar(head):
        return LEGACY_TAR
    if head.lstrip()[:1] == b"{" and is_index(path):
        return SHARDED
    if head[0] == 0x80 and starts_with_magic(head):
        return LEGACY
    if head[0] in NAMES:
        return RAW_PICKLE
    raise UnknownFormatError(_not_a_checkpoint(head), path=path)


def _detect_folder(path: str) -> str:
    if find_index(path) is not None:
        return SHARDED
    if os.path.isfile(os.path.join(path, ".metadata")):
        raise UnknownFormatError(
            "distributed checkpoint (DCP) folders are not supported; "
            "convert with torch.distributed.checkpoint.format_utils.dcp_to_torch_save",
            path=path,
        )
    raise UnknownFormatError("folder without an *.index.json: not a sharded checkpoint", path=path)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        raise FileAccessError("no such file", path=path) from None
    except OSError as exc:
        raise FileAccessError(f"cannot read: {exc.strerror}", path=path) from None


def _not_a_checkpoint(head: bytes) -> str:
    if head.startswith(b"\x89PNG"):
        return "a PNG image, not a checkpoint"
    return "not a checkpoint: no zip, safetensors, tar or pickle signature"


def read_checkpoint(path: str) -> Checkpoint:
    """Read any supported checkpoint's metadata; no tensor data is read, nothing executed."""
    fmt = _detect(path)
    try:
        return _read(path, fmt)
    except PermissionError as exc:
        raise FileAccessError(f"cannot read: {exc.strerror}", path=path) from None
    except PickleError as exc:
        if fmt == RAW_PICKLE and not _starts_as_pickle(path):
            raise UnknownFormatError(f"not a checkpoint ({exc.message})", path=path) from None
        raise


def _read(path: str, fmt: str) -> Checkpoint:
    if fmt == ZIP:
        return read_torch_zip(path, open_archive(path))
    if fmt == SAFETENSORS:
        return read_safetensors(path)
    if fmt == LEGACY:
        return read_legacy(path)
    if fmt == LEGACY_TAR:
        return read_legacy_tar(path)
    if fmt == SHARDED:
        index = find_index(path) if os.path.isdir(path) else path
        return read_sharded(index or path, _read_shard)
    return read_raw_pickle(path)


def _read_shard(path: str) -> Checkpoint:
    fmt = _detect(path)
    if fmt not in (ZIP, SAFETENSORS, LEGACY):
        raise FormatError(f"shard is {fmt}, expected safetensors or a torch checkpoint", path=path)
    return _read(path, fmt)


def _starts_as_pickle(path: str) -> bool:
    """Protocol 2+ pickles open with PROTO; older ones are only recognisable by decoding."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"
