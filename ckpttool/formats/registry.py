"""The one list of formats, tried in order; detecting, reading and scanning all go through it.

The file name never decides the format: a raw pickle named `.bin`, a TorchScript archive
named `.pt` and a PNG renamed `.pth` are told apart by their bytes. Each path is probed
once (its first bytes, size, whether it is a folder) and each format recognises itself
from that probe, so the order below is the order of precedence: containers that only
`scan` opens first (reading skips them), then torch's formats as torch.load tries them
(a zip before anything else), raw pickles last. Folders: an index, then a DeepSpeed
ZeRO run, then DCP, then a Hugging Face folder with one weights file.
"""

from __future__ import annotations

from ckpttool.checkpoint import Checkpoint
from ckpttool.errors import NotACheckpointError, UnknownFormatError
from ckpttool.formatnames import FormatName
from ckpttool.formats.containers import (
    BZ2_FORMAT,
    GZIP_FORMAT,
    LZMA_FORMAT,
    NPY_FORMAT,
    SEALED_FORMAT,
    TAR_FORMAT,
    XZ_FORMAT,
    ZIP_FORMAT,
    ZLIB_FORMAT,
)
from ckpttool.formats.dcp_format import DCP_FORMAT
from ckpttool.formats.deepspeed import DEEPSPEED_FORMAT
from ckpttool.formats.format import Format, Found, Probe, not_a_checkpoint, probe
from ckpttool.formats.hffolder import HF_FOLDER_FORMAT, WEIGHTS_FILES
from ckpttool.formats.legacy import LEGACY_FORMAT, LEGACY_TAR_FORMAT
from ckpttool.formats.rawpickle import RAW_PICKLE_FORMAT
from ckpttool.formats.safetensors import SAFETENSORS_FORMAT
from ckpttool.formats.sharded import SHARDED_FORMAT
from ckpttool.formats.torchzip import TORCH_ZIP_FORMAT, TORCHSCRIPT_FORMAT

FORMATS: tuple[Format, ...] = (
    SEALED_FORMAT,
    NPY_FORMAT,
    GZIP_FORMAT,
    BZ2_FORMAT,
    XZ_FORMAT,
    ZLIB_FORMAT,
    LZMA_FORMAT,
    TAR_FORMAT,
    ZIP_FORMAT,
    TORCHSCRIPT_FORMAT,
    TORCH_ZIP_FORMAT,
    SAFETENSORS_FORMAT,
    LEGACY_TAR_FORMAT,
    SHARDED_FORMAT,
    LEGACY_FORMAT,
    DEEPSPEED_FORMAT,  # a folder, or the `latest` file naming one, which is text
    RAW_PICKLE_FORMAT,
    DCP_FORMAT,
    HF_FOLDER_FORMAT,
)


class _Registry:
    def identify(self, path: str, scanning: bool = False) -> tuple[Format, Probe]:
        """The first format that recognises `path`. Reading skips the scan-only containers."""
        looked = probe(path, self)
        return self.recognise(looked, scanning), looked

    def recognise(self, looked: Probe, scanning: bool = False) -> Format:
        path = looked.path
        for fmt in FORMATS:
            if (scanning or not fmt.scan_only) and fmt.recognise(looked):
                return fmt
        if looked.folder:
            names = ", ".join(WEIGHTS_FILES)
            message = f"folder without an *.index.json, {names} or .metadata: not a checkpoint"
            raise UnknownFormatError(message, path=path)
        raise NotACheckpointError(not_a_checkpoint(looked.head), path=path)


REGISTRY = _Registry()


class OpenedFile:
    """One path as a command works on it: probed once, each of its pickles decoded once.
    Its checkpoint (`checkpoint`) and its pickles for a scan (`pickles`) come from the same
    probe, so the zip directory, the decoded pickles and the read are shared between them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.probe = probe(path, REGISTRY)
        self._found: Found | None = None

    def checkpoint(self) -> Checkpoint:
        """The checkpoint's metadata (read once; the same object on each call)."""
        return REGISTRY.recognise(self.probe).open(self.probe)

    def kind(self) -> FormatName:
        """What `detect` says of the path, from this probe."""
        return REGISTRY.recognise(self.probe).kind_of(self.probe)

    def pickles(self) -> Found:
        """Every pickle the file holds, decoded inert, for a scan (found once)."""
        if self._found is None:
            self._found = REGISTRY.recognise(self.probe, scanning=True).scan(self.probe)
        return self._found


def open_path(path: str) -> OpenedFile:
    """Raises when `path` is missing, unreadable or an empty file."""
    return OpenedFile(path)


def detect(path: str) -> FormatName:
    """The format of `path`, from its content (and, for folders, the files in them)."""
    fmt, looked = REGISTRY.identify(path)
    return fmt.kind_of(looked)


def read_checkpoint(path: str) -> Checkpoint:
    """Read any supported checkpoint's metadata; no tensor data is read, nothing executed."""
    return open_path(path).checkpoint()


def find_pickles(path: str) -> Found:
    """Every pickle in `path`, whatever holds it, decoded inert; `Found.format` names it."""
    return open_path(path).pickles()
