"""`manifest.json`: what a fixture folder holds and what each file must still do.

For every file: its sha256, size, format, save style, where its weights live, the
storage locations written into it, the epoch it was saved at, the model's accuracy
and loss on both splits at that point, and the logits of the fixed probe batch.
Logits are stored exactly, as the hex of their little-endian float32 bytes, beside a
readable list of the same numbers. `evaluation` says on which device the accuracy,
loss and logits were computed, with the fingerprint of what those numbers depend on
there (`fingerprint`): a check whose fingerprint equals it must reproduce them bit
for bit, any other check within a tolerance.

This module does not import torch at import time: reading a manifest and printing
a summary need no tensors. `ProbeLogits.to_tensor` imports it when called.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpttool.errors import CkptError
from ckpttool.formatnames import FormatName

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION = 2
# Version 1 had no fingerprints; its numbers are compared within the tolerance.
READABLE_SCHEMA_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
KIND = "ckpttool-reference-fixtures"


class ManifestError(CkptError):
    """A manifest.json that is missing, not JSON, or lacks what a fixture check needs."""


@dataclass(frozen=True)
class ProbeLogits:
    """Logits of the probe batch, exact: little-endian float32 bytes as hex."""

    shape: tuple[int, ...]
    hex: str

    @classmethod
    def from_tensor(cls, logits: torch.Tensor) -> ProbeLogits:
        array = logits.detach().cpu().contiguous().numpy().astype("<f4")
        return cls(shape=tuple(array.shape), hex=array.tobytes().hex())

    def to_tensor(self) -> torch.Tensor:
        import numpy
        import torch

        array = numpy.frombuffer(bytes.fromhex(self.hex), dtype="<f4").astype("float32")
        return torch.from_numpy(array.copy()).reshape(self.shape)

    def values(self) -> list[Any]:
        """The same numbers as nested lists; every float32 is exact as a Python float."""
        return self.to_tensor().tolist()


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    loss: float
    examples: int


@dataclass(frozen=True)
class FileRecord:
    """One fixture file and what the model in it must reproduce."""

    path: str
    sha256: str
    size: int
    format: FormatName
    style: str
    # Dotted path of the weights inside the file ("" for a bare state_dict or model).
    weights_root: str
    epoch: int
    train: Metrics
    test: Metrics
    probe_logits: ProbeLogits
    # Storage locations written into the file, sorted (`cpu`, `cuda:0`); none for
    # safetensors, which records no device.
    locations: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelRecord:
    """How to rebuild the model: `constructor(**args)` takes `input_shape` batches."""

    name: str
    constructor: str
    args: dict[str, object]
    input_shape: tuple[int, int, int]
    parameters: int


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    train_size: int
    test_size: int
    num_classes: int
    mean: float
    std: float


@dataclass(frozen=True)
class TrainingRecord:
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    seed: int
    device: str
    deterministic: bool
    steps_per_epoch: int | None
    epoch_losses: list[float]
    # The device the files record their storages on when that is not where the run
    # trained: a CPU run saved as a GPU run would save it (see `located`).
    located_as: str | None = None


@dataclass(frozen=True)
class EvaluationRecord:
    """Where the recorded numbers were computed: accuracy and loss, probe logits, and
    the machine fingerprint of each (see `fingerprint`; None in version-1 manifests)."""

    metrics_device: str
    probe_device: str
    metrics_fingerprint: dict[str, str] | None = None
    probe_fingerprint: dict[str, str] | None = None


@dataclass(frozen=True)
class ProbeRecord:
    """The probe batch: the first `size` test images. `images_sha256` of their uint8
    pixels holds on every machine; `input_sha256` of the float32 model input only
    where the fingerprints agree (resizing and normalising round per CPU kernel)."""

    size: int
    labels: list[int]
    input_sha256: str
    # None in version-1 manifests.
    images_sha256: str | None = None


@dataclass(frozen=True)
class Manifest:
    model: ModelRecord
    dataset: DatasetRecord
    training: TrainingRecord
    probe: ProbeRecord
    files: list[FileRecord]
    torch_version: str
    evaluation: EvaluationRecord
    schema_version: int = SCHEMA_VERSION

    def file(self, path: str) -> FileRecord:
        for record in self.files:
            if record.path == path:
                return record
        raise ManifestError(f"the manifest lists no file {path!r}")


def manifest_to_json(manifest: Manifest) -> dict[str, Any]:
    """The manifest as JSON data; each file's logits also as a readable list."""
    data = asdict(manifest)
    data = {"schema_version": manifest.schema_version, "kind": KIND, **data}
    for record, entry in zip(manifest.files, data["files"], strict=True):
        entry["probe_logits"]["values"] = record.probe_logits.values()
    return data


def write_manifest(manifest: Manifest, directory: Path) -> Path:
    """Write `directory/manifest.json` atomically (a temp file renamed into place)."""
    target = Path(directory) / MANIFEST_NAME
    text = json.dumps(manifest_to_json(manifest), indent=2) + "\n"
    partial = target.with_name(f".{MANIFEST_NAME}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def read_manifest(path: Path) -> Manifest:
    """Read a fixture folder's manifest (`path` is the folder or the json file)."""
    path = Path(path)
    target = path / MANIFEST_NAME if path.is_dir() else path
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError("no manifest.json: not a reference fixture folder", path=str(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"cannot read the manifest: {error}", path=str(target)) from None
    try:
        return _manifest_from_json(data)
    except (KeyError, TypeError, ValueError) as error:
        raise ManifestError(f"not a valid reference manifest: {error!r}", path=str(target)) from None


def _manifest_from_json(data: dict[str, Any]) -> Manifest:
    if data.get("kind") != KIND or data.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise ValueError(f"expected kind {KIND!r} schema_version {READABLE_SCHEMA_VERSIONS}")
    model = dict(data["model"], input_shape=tuple(data["model"]["input_shape"]))
    training = TrainingRecord(**data["training"])
    return Manifest(
        model=ModelRecord(**model),
        dataset=DatasetRecord(**data["dataset"]),
        training=training,
        probe=ProbeRecord(**data["probe"]),
        files=[_file_from_json(entry) for entry in data["files"]],
        torch_version=data["torch_version"],
        evaluation=_evaluation_from_json(data.get("evaluation"), training),
    )


def _evaluation_from_json(entry: dict[str, Any] | None, training: TrainingRecord) -> EvaluationRecord:
    # Manifests written before the record existed: metrics were computed where the
    # run trained, probe logits always on the CPU.
    if entry is None:
        return EvaluationRecord(metrics_device=training.device, probe_device="cpu")
    return EvaluationRecord(**entry)


def _file_from_json(entry: dict[str, Any]) -> FileRecord:
    logits = entry["probe_logits"]
    probe = ProbeLogits(shape=tuple(logits["shape"]), hex=logits["hex"])
    if len(bytes.fromhex(probe.hex)) != 4 * _product(probe.shape):
        raise ValueError(f"{entry['path']}: probe logits do not fill shape {probe.shape}")
    fields = {key: entry[key] for key in ("path", "sha256", "size", "format", "style")}
    return FileRecord(
        **fields,
        weights_root=entry["weights_root"],
        epoch=entry["epoch"],
        train=Metrics(**entry["train"]),
        test=Metrics(**entry["test"]),
        probe_logits=probe,
        locations=tuple(entry.get("locations", ())),
    )


def _product(shape: tuple[int, ...]) -> int:
    result = 1
    for size in shape:
        result *= size
    return result
