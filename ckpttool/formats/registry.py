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

from collections.abc import Iterator, Sequence
from importlib import import_module
from typing import TYPE_CHECKING, overload

from ckpttool.errors import NotACheckpointError, UnknownFormatError
from ckpttool.formatnames import FormatName
from ckpttool.formats.format import Format, Found, Probe, not_a_checkpoint, probe

if TYPE_CHECKING:
    from ckpttool.checkpoint import Checkpoint

# (module, name) of each format's declaration, in order of precedence. A module is imported
# when the search reaches it: reading a torch zip never imports the DCP, DeepSpeed, joblib or
# legacy readers.
DECLARED: tuple[tuple[str, str], ...] = (
    ("ckpttool.formats.containers", "SEALED_FORMAT"),
    ("ckpttool.formats.containers", "NPY_FORMAT"),
    ("ckpttool.formats.containers", "GZIP_FORMAT"),
    ("ckpttool.formats.containers", "BZ2_FORMAT"),
    ("ckpttool.formats.containers", "XZ_FORMAT"),
    ("ckpttool.formats.containers", "ZLIB_FORMAT"),
    ("ckpttool.formats.containers", "LZMA_FORMAT"),
    ("ckpttool.formats.containers", "TAR_FORMAT"),
    ("ckpttool.formats.dcp_data", "DCP_DATA_FORMAT"),  # a zip at first sight, but only its folder reads
    ("ckpttool.formats.containers", "ZIP_FORMAT"),
    ("ckpttool.formats.pt2", "PT2_FORMAT"),  # a zip without data.pkl, whose weights JSON describes
    ("ckpttool.formats.torchzip", "TORCHSCRIPT_FORMAT"),
    ("ckpttool.formats.torchzip", "TORCH_ZIP_FORMAT"),
    ("ckpttool.formats.safetensors", "SAFETENSORS_FORMAT"),
    ("ckpttool.formats.legacy", "LEGACY_TAR_FORMAT"),
    ("ckpttool.formats.sharded", "SHARDED_FORMAT"),
    ("ckpttool.formats.legacy", "LEGACY_FORMAT"),
    ("ckpttool.formats.deepspeed", "DEEPSPEED_FORMAT"),  # a folder, or the `latest` file naming one, which is text
    ("ckpttool.formats.rawpickle", "RAW_PICKLE_FORMAT"),
    ("ckpttool.formats.dcp_format", "DCP_FORMAT"),
    ("ckpttool.formats.hffolder", "HF_FOLDER_FORMAT"),
)


class _Declared(Sequence[Format]):
    """The formats of `DECLARED`, each imported on first use."""

    def __iter__(self) -> Iterator[Format]:
        for module, name in DECLARED:
            fmt: Format = getattr(import_module(module), name)
            yield fmt

    def __len__(self) -> int:
        return len(DECLARED)

    @overload
    def __getitem__(self, index: int) -> Format: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Format]: ...
    def __getitem__(self, index: int | slice) -> Format | Sequence[Format]:
        return tuple(self)[index]


FORMATS: Sequence[Format] = _Declared()


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
            from ckpttool.formats.hffolder import WEIGHTS_FILES

            names = ", ".join(WEIGHTS_FILES[:2])
            weights = f"{names} (or diffusers' or peft's)"
            # A folder of several checkpoints (Lightning's, timm's): each file is one.
            message = f"folder without an *.index.json, {weights} or .metadata: not a checkpoint (name its files)"
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

    def holds(self, checkpoint: Checkpoint) -> bool:
        """Whether `checkpoint` was read from this path here (a folder's names its index or file)."""
        return checkpoint.path == self.path or any(outcome is checkpoint for outcome in self.probe.reads.values())

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
