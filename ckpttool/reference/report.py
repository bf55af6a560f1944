"""What `reference train` prints: a summary table or a JSON document.

Built from the manifest and the run's timings only, so that what a user sees is
what the manifest says.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ckpttool.reference.manifest import FileRecord, Manifest, Metrics
from ckpttool.render import SCHEMA_VERSION, fit_table, human_size, key_values, to_table


@dataclass(frozen=True)
class TrainSummary:
    """A finished `reference train`: its manifest, where it is, how long it took."""

    manifest: Manifest
    manifest_path: Path
    train: Metrics
    test: Metrics
    training_seconds: float
    total_seconds: float


def train_json(summary: TrainSummary) -> str:
    manifest, training = summary.manifest, summary.manifest.training
    payload: dict[str, object] = {
        "schema_version": SCHEMA_VERSION,
        "out": str(summary.manifest_path.parent),
        "manifest": str(summary.manifest_path),
        "model": manifest.model.name,
        "constructor": manifest.model.constructor,
        "parameters": manifest.model.parameters,
        "dataset": manifest.dataset.name,
        "device": training.device,
        "deterministic": training.deterministic,
        "train": asdict(summary.train),
        "test": asdict(summary.test),
        "epochs": [{"epoch": i, "loss": loss} for i, loss in enumerate(training.epoch_losses, 1)],
        "seconds": {"training": summary.training_seconds, "total": summary.total_seconds},
        "files": [_file_json(record) for record in manifest.files],
    }
    return json.dumps(payload, indent=2, allow_nan=True)


def _file_json(record: FileRecord) -> dict[str, object]:
    return {
        "path": record.path,
        "style": record.style,
        "format": record.format,
        "epoch": record.epoch,
        "size": record.size,
        "sha256": record.sha256,
        "test_accuracy": record.test.accuracy,
    }


def train_table(summary: TrainSummary, width: int | None = None) -> str:
    """Fits `width` (the terminal's): the file column is cut where names differ."""
    return "\n\n".join([_overview(summary, width), _epochs_table(summary), _files_table(summary, width)])


def _overview(summary: TrainSummary, width: int | None) -> str:
    manifest, training = summary.manifest, summary.manifest.training
    dataset, model = manifest.dataset, manifest.model
    rows = [
        ("model", f"{model.name}  ({model.constructor}, {model.parameters:,} parameters)"),
        ("dataset", f"{dataset.name}  ({dataset.train_size} train / {dataset.test_size} test)"),
        ("device", f"{training.device}{'  (deterministic)' if training.deterministic else ''}"),
        ("training", _training_text(summary)),
        ("train", _metrics_text(summary.train)),
        ("test", _metrics_text(summary.test)),
        (
            "time",
            f"{summary.training_seconds:.1f} s training, {summary.total_seconds:.1f} s in all",
        ),
        ("manifest", str(summary.manifest_path)),
    ]
    return key_values(rows, width)


def _metrics_text(metrics: Metrics) -> str:
    return f"accuracy {metrics.accuracy:.4f}  loss {metrics.loss:.4f}  ({metrics.examples} examples)"


def _training_text(summary: TrainSummary) -> str:
    training = summary.manifest.training
    steps = f", {training.steps_per_epoch} steps/epoch" if training.steps_per_epoch else ""
    return (
        f"{training.optimizer} lr {training.lr:g}, batch {training.batch_size}, "
        f"{training.epochs} epochs{steps}, seed {training.seed}"
    )


def _epochs_table(summary: TrainSummary) -> str:
    rows = [(i, f"{loss:.4f}") for i, loss in enumerate(summary.manifest.training.epoch_losses, 1)]
    return to_table(["epoch", "train loss"], rows)


def _files_table(summary: TrainSummary, width: int | None) -> str:
    rows = [
        (
            record.path,
            record.style,
            record.format,
            record.epoch,
            human_size(record.size),
            f"{record.test.accuracy:.4f}",
            record.sha256[:12],
        )
        for record in summary.manifest.files
    ]
    headers = ["file", "style", "format", "epoch", "size", "test acc", "sha256"]
    return fit_table(headers, rows, width, shrink=(0, 1), whole="--format json")
