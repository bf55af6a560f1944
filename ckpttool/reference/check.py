"""`reference check`: reload every fixture through ckpttool and prove it still works.

For each file the manifest lists: its sha256 and size, the format and weights root
ckpttool finds, the storage locations it names; then its weights, read by ckpttool's
code-free reader (never `torch.load`; whole pickled models included) and loaded
strictly into a freshly built model, must reproduce the recorded accuracy and loss
on both splits and the probe logits (see `compare` for exact versus tolerant). The
same holds for the files `convert` (safetensors, pth) and `remap --device cpu` make
from it. Last, the resume proof: k epochs, save `{'model','optimizer'}`, read it back
through ckpttool, train the rest; the weights must equal a run straight through.

Every failure is a `CheckResult` naming the file, the variant and the check;
nothing here prints. Errors that stop the whole check (no manifest, no dataset) are
`CkptError`s.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckpttool.checkpoint import Checkpoint
from ckpttool.errors import CkptError, UsageError
from ckpttool.formats import read_checkpoint
from ckpttool.materialize import load, load_state_dict
from ckpttool.reference.compare import (
    DEFAULT_TOLERANCE,
    Comparison,
    Mode,
    Tolerance,
    compare_logits,
    compare_metrics,
    comparison_mode,
)
from ckpttool.reference.data import ReferenceData, load_dataset
from ckpttool.reference.derived import AS_SAVED, DERIVATIONS, Derivation, make_derived
from ckpttool.reference.fingerprint import Fingerprint, machine_fingerprint
from ckpttool.reference.fixtures import probe_images_sha256, probe_input_sha256, sha256_of, train_config_of
from ckpttool.reference.manifest import FileRecord, Manifest, read_manifest
from ckpttool.reference.models import ModelSpec, get_model_spec
from ckpttool.reference.progress import advance, phase
from ckpttool.reference.resume import ResumeProof, prove_resume
from ckpttool.reference.train import (
    Evaluation,
    compute_probe_logits,
    evaluate_model,
    reproducible,
    resolve_device,
    steps_per_epoch,
)
from ckpttool.weights import find_weights

# Two epochs, resumed after the first: the shortest run that proves the point.
DEFAULT_RESUME_EPOCHS = 2


@dataclass(frozen=True)
class CheckResult:
    """One check: of a fixture file (as saved, or a file made from it), or of the run."""

    # The fixture's name in the manifest; None for the dataset and resume checks.
    file: str | None
    # `file` (the fixture as saved), `safetensors`, `pth`, `remap-cpu`; "" for none.
    variant: str
    check: str
    ok: bool
    detail: str


@dataclass
class CheckReport:
    """Everything `reference check` found about one fixture folder."""

    directory: Path
    manifest: Manifest
    device: str
    metrics_mode: Mode
    logits_mode: Mode
    tolerance: Tolerance
    # This machine's, for the evaluation device (see `fingerprint`).
    fingerprint: Fingerprint
    results: list[CheckResult] = field(default_factory=list)
    resume: ResumeProof | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [result for result in self.results if not result.ok]


def check_fixtures(
    directory: Path,
    device: str = "auto",
    data_root: Path | None = None,
    resume_epochs: int = DEFAULT_RESUME_EPOCHS,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    exact: bool = False,
) -> CheckReport:
    """Check every fixture of `directory` against its manifest; see the module doc.

    `device` evaluates the reloaded models (`auto`: CUDA when present); the resume
    proof always trains on the CPU, where two runs in one process are bit-exact.
    `resume_epochs` 0 skips it. `exact` demands bit-exact numbers even where this
    machine's fingerprint differs from the recorded one (see `compare`).
    """
    started = time.perf_counter()
    if resume_epochs == 1:
        raise UsageError("the resume proof needs at least 2 epochs (or 0 to skip it)")
    directory = Path(directory)
    manifest = read_manifest(directory)
    data = load_dataset(manifest.dataset.name, data_root)
    checker = FixtureChecker(manifest, data, torch.device(resolve_device(device)), tolerance, exact)
    report = checker.new_report(directory)
    report.results += checker.check_dataset()
    if not manifest.files:
        report.results.append(CheckResult(None, "", "files", False, "the manifest lists no files"))
    with tempfile.TemporaryDirectory(prefix="ckpttool-reference-check-") as scratch:
        with phase("checking files", len(manifest.files), "file"):
            for record in manifest.files:
                report.results += checker.check_file(directory, record, Path(scratch))
                advance()
        if resume_epochs:
            report.resume, result = check_resume(manifest, data, resume_epochs, Path(scratch))
            report.results.append(result)
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class FixtureChecker:
    """Checks the files of one manifest on one device."""

    manifest: Manifest
    data: ReferenceData
    device: torch.device
    tolerance: Tolerance = DEFAULT_TOLERANCE
    exact: bool = False
    spec: ModelSpec = field(init=False)
    metrics_mode: Mode = field(init=False)
    logits_mode: Mode = field(init=False)
    # Weights fingerprint -> what those weights do.
    outcomes: dict[str, Outcome] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.spec = get_model_spec(self.manifest.model.name)
        evaluation = self.manifest.evaluation
        self.metrics_mode = comparison_mode(evaluation.metrics_fingerprint, self.device, self.exact)
        self.logits_mode = comparison_mode(evaluation.probe_fingerprint, self.device, self.exact)

    def new_report(self, directory: Path) -> CheckReport:
        return CheckReport(
            directory,
            self.manifest,
            str(self.device),
            self.metrics_mode,
            self.logits_mode,
            self.tolerance,
            machine_fingerprint(self.device),
        )

    def check_dataset(self) -> list[CheckResult]:
        """The data must be what the manifest's numbers were computed on."""
        recorded, data = self.manifest.dataset, self.data
        sizes = (len(data.train), len(data.test))
        size_check = Comparison(
            "sizes",
            sizes == (recorded.train_size, recorded.test_size),
            f"{sizes[0]} train / {sizes[1]} test; the manifest has {recorded.train_size} / {recorded.test_size}",
        )
        checks = [size_check, self.check_probe()]
        return [CheckResult(None, "", f"dataset-{c.check}", c.ok, c.detail) for c in checks]

    def check_probe(self) -> Comparison:
        """Same probe images and labels; the same float32 model input, bit for bit,
        where the CPU fingerprints agree (resizing and normalising round per kernel;
        elsewhere the logits' tolerance covers it)."""
        inputs, labels = self.data.probe_batch(self.spec.input_shape)
        probe = self.manifest.probe
        same = [int(label) for label in labels] == probe.labels
        if probe.images_sha256 is not None:
            same = same and probe_images_sha256(self.data, probe.size) == probe.images_sha256
        input_exact = comparison_mode(self.manifest.evaluation.probe_fingerprint, torch.device("cpu"), self.exact).exact
        if input_exact:
            same = same and probe_input_sha256(inputs) == probe.input_sha256
        if not same:
            return Comparison("probe-input", False, "the probe batch differs from the manifest's")
        compared = "same images, labels and model input" if input_exact else "same images and labels"
        return Comparison("probe-input", True, compared)

    def check_file(self, directory: Path, record: FileRecord, scratch: Path) -> list[CheckResult]:
        """The fixture as saved, then each file ckpttool makes from it."""
        if Path(record.path).name != record.path or record.path in ("", ".", ".."):
            # Fixtures sit beside their manifest; a manifest never points elsewhere.
            detail = "not a file name in the fixture folder"
            return [CheckResult(record.path, AS_SAVED, "exists", False, detail)]
        path = directory / record.path
        if not path.is_file():
            return [CheckResult(record.path, AS_SAVED, "exists", False, f"{path} is missing")]
        comparisons = integrity_checks(path, record)
        comparisons += self.check_weights(path, record.weights_root, record, AS_SAVED)
        results = [_result(record, AS_SAVED, comparison) for comparison in comparisons]
        for derivation in DERIVATIONS:
            if derivation.applies(record):
                results += self.check_derived(path, record, derivation, scratch)
        return results

    def check_derived(self, path: Path, record: FileRecord, derivation: Derivation, scratch: Path) -> list[CheckResult]:
        variant = derivation.variant
        try:
            made = make_derived(scratch, derivation, path, record)
        except CkptError as error:
            return [_result(record, variant, Comparison("make", False, one_line(error)))]
        comparisons = []
        if derivation.locations is not None:
            comparisons.append(locations_check(made, derivation.locations))
        comparisons += self.check_weights(made, derivation.weights_root(record), record, variant)
        return [_result(record, variant, comparison) for comparison in comparisons]

    def check_weights(self, path: Path, root: str, record: FileRecord, variant: str) -> list[Comparison]:
        """Read the weights through ckpttool, load them strictly, evaluate, compare."""
        try:
            state = load_state_dict(str(path), root=root)
            model = self.build_model(state)
        except (CkptError, RuntimeError) as error:
            return [Comparison("load", False, one_line(error))]
        outcome = self.outcome_of(state, model, f"{record.path} ({variant})")
        detail = f"{len(state)} tensors, strict"
        if outcome.first != f"{record.path} ({variant})":
            detail += f"; evaluated as the same weights in {outcome.first}"
        return [Comparison("load", True, detail), *self.compare(outcome, record)]

    def build_model(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """A fresh model holding `state`; `load_state_dict(strict=True)` refuses a
        missing, unexpected or misshapen key."""
        # Built inside `reproducible`, which restores the caller's random state: the
        # initial values are overwritten anyway.
        with reproducible(torch.device("cpu"), 0):
            model = self.spec.create()
        model.load_state_dict(state, strict=True)
        return model.to(self.device)

    def outcome_of(self, state: dict[str, torch.Tensor], model: nn.Module, label: str) -> Outcome:
        """What the model does; computed once for each distinct set of weights.

        Evaluation is a deterministic function of the weights (see
        `train.evaluate_model`), and most fixtures of a run hold the same weights:
        re-evaluating identical bytes would only repeat the same numbers.
        """
        key = weights_fingerprint(state)
        if key not in self.outcomes:
            with phase("evaluating", len(self.data.train) + len(self.data.test), "example"):
                self.outcomes[key] = self._outcome(model, label)
        return self.outcomes[key]

    def _outcome(self, model: nn.Module, label: str) -> Outcome:
        shape, data = self.spec.input_shape, self.data
        return Outcome(
            train=evaluate_model(model, data, data.train, shape, self.device),
            test=evaluate_model(model, data, data.test, shape, self.device),
            logits=compute_probe_logits(model, data, shape, self.device),
            first=label,
        )

    def compare(self, outcome: Outcome, record: FileRecord) -> list[Comparison]:
        mode, tolerance = self.metrics_mode, self.tolerance
        expected_logits = record.probe_logits.to_tensor()
        return [
            *compare_metrics("train", record.train, outcome.train, mode, tolerance),
            *compare_metrics("test", record.test, outcome.test, mode, tolerance),
            compare_logits(expected_logits, outcome.logits, self.logits_mode, tolerance),
        ]


@dataclass(frozen=True)
class Outcome:
    """What one set of weights does, and the first file it was evaluated for."""

    train: Evaluation
    test: Evaluation
    logits: torch.Tensor
    first: str


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every key, dtype, shape and byte of a state_dict, in key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def integrity_checks(path: Path, record: FileRecord) -> list[Comparison]:
    """The bytes are the recorded ones; ckpttool sees the recorded format, root, devices."""
    size, digest = path.stat().st_size, sha256_of(path)
    same = digest == record.sha256 and size == record.size
    detail = f"{digest[:16]}..., {size} bytes"
    if not same:
        detail = f"expected {record.sha256[:16]}... ({record.size} bytes), got {detail}"
    checks = [Comparison("sha256", same, detail)]
    try:
        checkpoint = read_checkpoint(str(path))
        found_root = find_weights(checkpoint.root).root
    except CkptError as error:
        return [*checks, Comparison("read", False, one_line(error))]
    checks.append(_expect("format", record.format, checkpoint.format))
    checks.append(_expect("weights-root", record.weights_root, found_root))
    if record.locations:
        checks.append(_expect("locations", list(record.locations), _locations_of(checkpoint)))
    return checks


def locations_check(path: Path, expected: tuple[str, ...]) -> Comparison:
    try:
        found = _locations_of(read_checkpoint(str(path)))
    except CkptError as error:
        return Comparison("locations", False, one_line(error))
    return _expect("locations", list(expected), found)


def _locations_of(checkpoint: Checkpoint) -> list[str]:
    return sorted({storage.location for storage in checkpoint.storages.values()})


def _expect(check: str, expected: object, actual: object) -> Comparison:
    if expected == actual:
        return Comparison(check, True, _shown(actual))
    return Comparison(check, False, f"expected {_shown(expected)}, got {_shown(actual)}")


def _shown(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(value) or "none"
    return repr(value) if value == "" else str(value)


def _result(record: FileRecord, variant: str, comparison: Comparison) -> CheckResult:
    return CheckResult(record.path, variant, comparison.check, comparison.ok, comparison.detail)


def one_line(error: BaseException) -> str:
    """An error as one line: torch's load_state_dict messages span several."""
    return " ".join(str(error).split())


def check_resume(
    manifest: Manifest, data: ReferenceData, epochs: int, scratch: Path
) -> tuple[ResumeProof | None, CheckResult]:
    """The manifest's training, `epochs` long on the CPU, resumed half way through
    a checkpoint that ckpttool's reader loads."""
    config = replace(train_config_of(manifest), epochs=epochs, device="cpu")
    # The straight run trains every epoch, the resumed one the second half again.
    steps = (epochs + epochs - epochs // 2) * steps_per_epoch(config, data)
    try:
        with phase("resume proof", steps, "step"):
            proof = prove_resume(config, data, scratch / "resume", read_checkpoint_through_ckpttool)
    except (CkptError, RuntimeError, KeyError, TypeError, ValueError) as error:
        return None, CheckResult(None, "", "resume", False, one_line(error))
    how = f"{epochs} epochs on cpu, resumed after {proof.split_epoch} from ckpttool's reader"
    if proof.identical:
        detail = f"{how}: all {proof.compared} weights and optimizer values bit-identical"
    else:
        shown = ", ".join(proof.mismatched[:3]) + (", ..." if len(proof.mismatched) > 3 else "")
        detail = f"{how}: {len(proof.mismatched)} of {proof.compared} values differ ({shown})"
    return proof, CheckResult(None, "", "resume", proof.identical, detail)


def read_checkpoint_through_ckpttool(path: Path) -> Mapping[str, Any]:
    """A `resume.CheckpointLoader` that never runs code from the file."""
    loaded = load(str(path))
    if not isinstance(loaded, Mapping):
        raise UsageError(f"expected a dict of 'model' and 'optimizer', got {type(loaded).__name__}")
    return loaded
