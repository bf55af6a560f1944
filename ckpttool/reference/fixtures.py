"""Train a reference model and write its fixtures and manifest into a folder."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ckpttool.reference.choices import STYLE_NAMES
from ckpttool.reference.data import ReferenceData
from ckpttool.reference.fingerprint import machine_fingerprint
from ckpttool.reference.manifest import (
    MANIFEST_NAME,
    DatasetRecord,
    EvaluationRecord,
    FileRecord,
    Manifest,
    Metrics,
    ModelRecord,
    ProbeLogits,
    ProbeRecord,
    TrainingRecord,
    write_manifest,
)
from ckpttool.reference.progress import advance, phase
from ckpttool.reference.report import TrainSummary
from ckpttool.reference.saving import SavedFile, save_periodic_checkpoint, save_styles
from ckpttool.reference.staging import staged_folder
from ckpttool.reference.train import (
    EpochReport,
    Evaluation,
    SilentObserver,
    TrainConfig,
    TrainingObserver,
    TrainingRun,
)

# The tutorial saves its `{'state_dict','optimizer'}` checkpoint every third epoch.
DEFAULT_CHECKPOINT_EVERY = 3


@dataclass(frozen=True)
class Snapshot:
    """What the model does at one point of training: both splits and the probe."""

    epoch: int
    train: Evaluation
    test: Evaluation
    probe_logits: torch.Tensor


@dataclass
class FixtureSet:
    """The outcome of `build_fixtures`: the run, its final snapshot and the manifest."""

    run: TrainingRun
    final: Snapshot
    manifest: Manifest
    manifest_path: Path


def take_snapshot(run: TrainingRun) -> Snapshot:
    with phase("evaluating", len(run.data.train) + len(run.data.test), "example"):
        return Snapshot(
            epoch=run.epochs_done,
            train=run.evaluate(run.data.train),
            test=run.evaluate(run.data.test),
            probe_logits=run.probe_logits(),
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(saved: SavedFile, snapshot: Snapshot) -> FileRecord:
    return FileRecord(
        path=saved.path.name,
        sha256=sha256_of(saved.path),
        size=saved.path.stat().st_size,
        format=saved.format,
        style=saved.style,
        weights_root=saved.weights_root,
        epoch=saved.epoch,
        train=metrics_of(snapshot.train),
        test=metrics_of(snapshot.test),
        probe_logits=ProbeLogits.from_tensor(snapshot.probe_logits),
        locations=saved.locations,
    )


def metrics_of(evaluation: Evaluation) -> Metrics:
    return Metrics(evaluation.accuracy, evaluation.loss, evaluation.examples)


@dataclass
class PeriodicCheckpoints:
    """Saves `{'state_dict','optimizer'}` every `every` epochs, as the tutorial does.

    The last epoch is left out: the final files are written after training.
    `build_fixtures` points `directory` at its staging folder, so that these land with
    the rest of the set at the end, never on their own before it.
    """

    directory: Path
    every: int
    total_epochs: int
    inner: TrainingObserver = field(default_factory=SilentObserver)
    located_as: str | None = None
    records: list[FileRecord] = field(default_factory=list)

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        self.inner.on_step(epoch, step, steps, loss)

    def on_epoch_end(self, run: TrainingRun, report: EpochReport) -> None:
        self.inner.on_epoch_end(run, report)
        due = self.every > 0 and report.epoch % self.every == 0
        if due and report.epoch < self.total_epochs:
            saved = save_periodic_checkpoint(run, self.directory, self.located_as)
            self.records.append(file_record(saved, take_snapshot(run)))


def build_fixtures(
    config: TrainConfig,
    data: ReferenceData,
    directory: Path,
    styles: Sequence[str] = STYLE_NAMES,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    observer: TrainingObserver | None = None,
    located_as: str | None = None,
) -> FixtureSet:
    """Train `config` on `data`, save every style into `directory`, write the manifest.

    The whole set is written into a hidden staging folder and moved into `directory`
    together at the end (`reference.staging`): an error or a stop signal on the way
    leaves `directory` as it was. Files of the same names there are replaced, others
    kept; the folder and its missing parents are created.

    `located_as` (e.g. `cuda:0`) writes the files as a run on that device would,
    whatever device trains; the manifest says so, and where the numbers came from.
    """
    directory = Path(directory)
    periodic_every = checkpoint_every if "state-dict-optimizer" in styles else 0
    with staged_folder(directory) as staging:
        inner = observer or SilentObserver()
        periodic = PeriodicCheckpoints(staging.folder, periodic_every, config.epochs, inner, located_as)
        run = TrainingRun(config, data, periodic)
        with phase("training", run.steps_until(config.epochs), "step"):
            run.train_until(config.epochs)
        final = take_snapshot(run)
        saved_files = _save_styles(run, styles, staging.folder, located_as)
        # Hashed where they are staged: a rename keeps the bytes.
        records = periodic.records + [file_record(saved, final) for saved in saved_files]
        manifest = build_manifest(run, records, located_as)
        write_manifest(manifest, staging.folder)
        # The manifest last: whoever sees it in the folder finds the files it lists.
        staging.land([record.path for record in records] + [MANIFEST_NAME])
    return FixtureSet(run, final, manifest, directory / MANIFEST_NAME)


def _save_styles(run: TrainingRun, styles: Sequence[str], folder: Path, located_as: str | None) -> list[SavedFile]:
    saved = []
    with phase("saving", len(styles), "file"):
        for style in styles:
            saved += save_styles(run, [style], folder, located_as)
            advance()
    return saved


def summarize(fixtures: FixtureSet, total_seconds: float) -> TrainSummary:
    """What `reference train` reports about a finished `build_fixtures`."""
    return TrainSummary(
        manifest=fixtures.manifest,
        manifest_path=fixtures.manifest_path,
        train=metrics_of(fixtures.final.train),
        test=metrics_of(fixtures.final.test),
        training_seconds=fixtures.run.seconds,
        total_seconds=total_seconds,
    )


def train_config_of(manifest: Manifest) -> TrainConfig:
    """The configuration a manifest's fixtures were trained with, to train them again."""
    training = manifest.training
    return TrainConfig(
        model=manifest.model.name,
        epochs=training.epochs,
        batch_size=training.batch_size,
        lr=training.lr,
        optimizer=training.optimizer,
        seed=training.seed,
        device=training.device,
        steps_per_epoch=training.steps_per_epoch,
    )


def build_manifest(run: TrainingRun, files: list[FileRecord], located_as: str | None = None) -> Manifest:
    return Manifest(
        model=model_record(run),
        dataset=dataset_record(run.data),
        training=training_record(run, located_as),
        probe=probe_record(run),
        files=files,
        torch_version=torch.__version__,
        # `take_snapshot` evaluates where the run trains; probe logits are always
        # computed on the CPU (`TrainingRun.probe_logits`).
        evaluation=EvaluationRecord(
            metrics_device=run.config.device,
            probe_device="cpu",
            metrics_fingerprint=machine_fingerprint(torch.device(run.config.device)),
            probe_fingerprint=machine_fingerprint(torch.device("cpu")),
        ),
    )


def model_record(run: TrainingRun) -> ModelRecord:
    spec = run.spec
    return ModelRecord(
        name=spec.name,
        constructor=spec.constructor_path,
        args=dict(spec.kwargs),
        input_shape=spec.input_shape,
        parameters=sum(parameter.numel() for parameter in run.model.parameters()),
    )


def dataset_record(data: ReferenceData) -> DatasetRecord:
    return DatasetRecord(
        name=data.name,
        train_size=len(data.train),
        test_size=len(data.test),
        num_classes=data.num_classes,
        mean=data.mean,
        std=data.std,
    )


def training_record(run: TrainingRun, located_as: str | None = None) -> TrainingRecord:
    config = run.config
    return TrainingRecord(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=config.optimizer,
        seed=config.seed,
        device=config.device,
        deterministic=config.deterministic,
        steps_per_epoch=config.steps_per_epoch,
        epoch_losses=[report.loss for report in run.history],
        located_as=located_as,
    )


def probe_record(run: TrainingRun) -> ProbeRecord:
    inputs, labels = run.data.probe_batch(run.spec.input_shape)
    size = int(labels.shape[0])
    return ProbeRecord(
        size=size,
        labels=[int(label) for label in labels],
        input_sha256=probe_input_sha256(inputs),
        images_sha256=probe_images_sha256(run.data, size),
    )


def probe_input_sha256(inputs: torch.Tensor) -> str:
    """Fingerprint of the probe input, to tell a changed preprocessing from a bad file."""
    array = inputs.detach().cpu().contiguous().numpy().astype("<f4")
    return hashlib.sha256(array.tobytes()).hexdigest()


def probe_images_sha256(data: ReferenceData, size: int) -> str:
    """Fingerprint of the probe's uint8 pixels: the same bytes on every machine."""
    images = data.test.images[:size].contiguous()
    digest = hashlib.sha256(f"{tuple(images.shape)}|".encode())
    digest.update(images.numpy().tobytes())
    return digest.hexdigest()
