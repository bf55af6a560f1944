"""`reference check`: fresh and committed fixtures pass; tampered ones fail, named."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result

from ckpttool.errors import UsageError
from ckpttool.reference.check import CheckReport, check_fixtures
from ckpttool.reference.derived import VARIANTS
from ckpttool.reference.fixtures import FixtureSet

Cli = Callable[..., Result]


def failing(report: CheckReport) -> set[tuple[str | None, str, str]]:
    return {(result.file, result.variant, result.check) for result in report.failures}


def test_fresh_fixtures_pass_every_check(cnn_fixtures: FixtureSet) -> None:
    report = check_fixtures(cnn_fixtures.manifest_path.parent, device="cpu")
    assert report.ok, report.failures
    assert report.metrics_mode.exact and report.logits_mode.exact
    assert report.resume is not None and report.resume.identical
    for record in cnn_fixtures.manifest.files:
        variants = {r.variant for r in report.results if r.file == record.path}
        # safetensors has no storage locations to remap
        expected = set(VARIANTS) - ({"remap-cpu"} if record.format == "safetensors" else set())
        assert variants == expected, record.path
        checks = {r.check for r in report.results if r.file == record.path}
        assert {"sha256", "format", "weights-root", "load", "probe-logits"} <= checks
        assert {"train-accuracy", "train-loss", "test-accuracy", "test-loss"} <= checks


def test_committed_cnn_set_passes_through_the_cli(cli: Cli, committed: Path) -> None:
    result = cli("reference", "check", committed / "cnn", "--format", "json")
    assert result.exit_code == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["schema_version"] == 1 and report["ok"] is True
    assert report["failures"] == [] and report["resume"]["identical"] is True
    files = {check["file"] for check in report["checks"]} - {None}
    assert files == {
        "state_dict.pth",
        "model.pth",
        "checkpoint.pth.tar",
        "model_optimizer.pt",
        "general_checkpoint.tar",
        "model.safetensors",
    }
    assert report["tolerance"] == {"atol": 1e-4, "rtol": 1e-4, "accuracy_examples": 1}


@pytest.fixture
def copied(committed: Path, tmp_path: Path) -> Path:
    """A copy of the committed cnn set to tamper with."""
    return Path(shutil.copytree(committed / "cnn", tmp_path / "cnn"))


def flip_weight_byte(path: Path) -> None:
    """Flip an exponent bit of the first value of the largest tensor in a torch zip."""
    with zipfile.ZipFile(path) as archive:
        records = [info for info in archive.infolist() if "/data/" in info.filename]
    largest = max(records, key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    header = largest.header_offset
    name_length, extra_length = struct.unpack("<HH", data[header + 26 : header + 30])
    data[header + 30 + name_length + extra_length + 3] ^= 0x40
    path.write_bytes(bytes(data))


def edit_manifest(directory: Path, path: str, edit: Callable[[dict[str, Any]], None]) -> None:
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    edit(next(entry for entry in manifest["files"] if entry["path"] == path))
    manifest_path.write_text(json.dumps(manifest))


def test_a_flipped_weight_byte_fails_that_file_only(copied: Path) -> None:
    flip_weight_byte(copied / "state_dict.pth")
    report = check_fixtures(copied, device="cpu", resume_epochs=0)
    assert not report.ok
    assert {file for file, _, _ in failing(report)} == {"state_dict.pth"}
    assert ("state_dict.pth", "file", "sha256") in failing(report)
    # The changed record no longer holds its CRC-32: ckpttool refuses to load it, and
    # convert and remap refuse to make files from it (torch.load would use the bytes).
    assert ("state_dict.pth", "file", "load") in failing(report)
    for variant in ("safetensors", "pth", "remap-cpu"):
        (made,) = [r for r in report.failures if r.variant == variant]
        assert made.check == "make" and "CRC-32" in made.detail


def test_a_broken_archive_is_a_finding_not_a_crash(copied: Path, cli: Cli) -> None:
    path = copied / "model.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = cli("reference", "check", copied, "--resume-epochs", "0", "--format", "json")
    assert result.exit_code == 1
    failures = json.loads(result.stdout)["failures"]
    assert {failure["file"] for failure in failures} == {"model.pth"}
    checks = {(failure["variant"], failure["check"]) for failure in failures}
    assert {("file", "sha256"), ("file", "read"), ("file", "load")} <= checks
    assert ("safetensors", "make") in checks


def test_an_edited_accuracy_fails_that_file_in_the_table(copied: Path, cli: Cli) -> None:
    def one_more_right(entry: dict[str, Any]) -> None:
        entry["test"]["accuracy"] += 1 / entry["test"]["examples"]

    edit_manifest(copied, "checkpoint.pth.tar", one_more_right)
    result = cli("reference", "check", copied, "--resume-epochs", "0")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("result:") and "FAILED: 4 of" in line for line in lines)
    row = next(line for line in lines if line.startswith("checkpoint.pth.tar "))
    assert row.split()[1:] == ["FAIL", "test-accuracy"] * 4
    failures = lines[lines.index(next(line for line in lines if line.startswith("failed: file"))) :]
    assert len([line for line in failures if line.startswith("checkpoint.pth.tar")]) == 4
    assert not any(line.startswith("model.pth") for line in failures)


def test_one_changed_bit_of_a_recorded_logit_fails(copied: Path) -> None:
    def last_bit(entry: dict[str, Any]) -> None:
        digits = entry["probe_logits"]["hex"]
        entry["probe_logits"]["hex"] = f"{int(digits[0], 16) ^ 1:x}" + digits[1:]

    edit_manifest(copied, "model.safetensors", last_bit)
    report = check_fixtures(copied, device="cpu", resume_epochs=0)
    assert failing(report) == {
        ("model.safetensors", variant, "probe-logits") for variant in ("file", "safetensors", "pth")
    }
    detail = report.failures[0].detail
    assert detail.startswith("1 of 160 values differ")


def test_another_torch_version_is_compared_within_the_tolerance(copied: Path) -> None:
    manifest_path = copied / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["torch_version"] = "1.13.1"
    manifest_path.write_text(json.dumps(manifest))

    def nudge(entry: dict[str, Any]) -> None:
        # The last bit of the first logit: within the tolerance when not exact.
        digits = entry["probe_logits"]["hex"]
        entry["probe_logits"]["hex"] = f"{int(digits[0], 16) ^ 1:x}" + digits[1:]

    edit_manifest(copied, "state_dict.pth", nudge)
    report = check_fixtures(copied, device="cpu", resume_epochs=0)
    assert report.ok, report.failures
    assert not report.logits_mode.exact and "torch 1.13.1" in report.logits_mode.reason


def test_a_missing_file_is_named(copied: Path) -> None:
    (copied / "general_checkpoint.tar").unlink()
    report = check_fixtures(copied, device="cpu", resume_epochs=0)
    assert failing(report) == {("general_checkpoint.tar", "file", "exists")}


def test_a_manifest_naming_a_file_elsewhere_fails_that_entry(copied: Path) -> None:
    def elsewhere(entry: dict[str, Any]) -> None:
        entry["path"] = "../cnn/state_dict.pth"

    edit_manifest(copied, "state_dict.pth", elsewhere)
    report = check_fixtures(copied, device="cpu", resume_epochs=0)
    assert failing(report) == {("../cnn/state_dict.pth", "file", "exists")}


def test_an_empty_manifest_does_not_pass(copied: Path) -> None:
    manifest_path = copied / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = []
    manifest_path.write_text(json.dumps(manifest))
    report = check_fixtures(copied, device="cpu", resume_epochs=0)
    assert failing(report) == {(None, "", "files")}


def test_fixtures_are_never_read_by_torch_load(committed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `convert --to pth` verifies the file it has just written with
    # torch.load(weights_only=True); no fixture, and nothing with weights_only=False.
    original, folder = torch.load, committed / "cnn"  # noqa: TID251
    calls: list[str] = []

    def guarded(source: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(source))
        assert kwargs.get("weights_only") is True, "torch.load without weights_only=True"
        assert not str(source).startswith(str(folder)), f"torch.load read {source}"
        return original(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded)
    report = check_fixtures(folder, device="cpu")
    assert report.ok, report.failures
    assert calls and all("/pth/" in call for call in calls)


def test_a_folder_without_manifest_is_exit_2(cli: Cli, tmp_path: Path) -> None:
    result = cli("reference", "check", tmp_path)
    assert result.exit_code == 2
    assert "no manifest.json" in result.stderr and result.stdout == ""


def test_resume_proof_needs_two_epochs(copied: Path) -> None:
    with pytest.raises(UsageError, match="at least 2 epochs"):
        check_fixtures(copied, device="cpu", resume_epochs=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_is_refused_without_a_gpu(cli: Cli, committed: Path) -> None:
    result = cli("reference", "check", committed / "cnn", "--device", "cuda")
    assert result.exit_code == 2 and "no usable CUDA device" in result.stderr


def test_help_states_the_tolerance_and_exit_codes(cli: Cli) -> None:
    text = cli("reference", "check", "--help").stdout
    assert "atol 1e-4 + rtol 1e-4" in text and "Exit 0" in text
    assert "--resume-epochs" in text and "--device" in text
