"""`reference check`: fresh and committed fixtures pass; tampered ones fail, named."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result

from ckpttool.errors import UsageError
from ckpttool.reference.check import CheckReport, check_fixtures
from ckpttool.reference.compare import Mode
from ckpttool.reference.derived import VARIANTS
from ckpttool.reference.fixtures import FixtureSet
from ckpttool.reference.manifest import ProbeLogits

Cli = Callable[..., Result]


def failing(report: CheckReport) -> set[tuple[str | None, str, str]]:
    return {(result.file, result.variant, result.check) for result in report.failures}


@pytest.mark.slow
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


@pytest.mark.slow
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
    # Bit-exact on the machine that recorded the set, within the tolerance elsewhere.
    here = report["fingerprint"]["here"]
    exact = here == report["fingerprint"]["recorded"]["logits"]
    assert report["comparison"]["logits"]["exact"] is exact
    assert report["comparison"]["logits"]["reason"].startswith("this machine's" if exact else "fingerprint differs")


@pytest.fixture
def copied(cnn_fixtures: FixtureSet, tmp_path: Path) -> Path:
    """A copy of a set made in this process, to tamper with: its fingerprint is this
    machine's, so its numbers are checked bit for bit wherever the tests run."""
    return Path(shutil.copytree(cnn_fixtures.manifest_path.parent, tmp_path / "cnn"))


def edit_fingerprints(directory: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply `edit` to the manifest's evaluation record."""
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    edit(manifest["evaluation"])
    manifest_path.write_text(json.dumps(manifest))


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_one_changed_bit_of_a_recorded_logit_fails(copied: Path) -> None:
    edit_manifest(copied, "model.safetensors", last_logit_bit)
    report = check_fixtures(copied, device="cpu", resume_epochs=0)
    assert failing(report) == {
        ("model.safetensors", variant, "probe-logits") for variant in ("file", "safetensors", "pth")
    }
    detail = report.failures[0].detail
    assert detail.startswith("1 of 160 values differ")


def last_logit_bit(entry: dict[str, Any]) -> None:
    """The last bit of the first recorded logit: within the tolerance when not exact."""
    digits = entry["probe_logits"]["hex"]
    entry["probe_logits"]["hex"] = f"{int(digits[0], 16) ^ 1:x}" + digits[1:]


def other_capability(evaluation: dict[str, Any]) -> None:
    for name in ("metrics_fingerprint", "probe_fingerprint"):
        evaluation[name]["cpu_capability"] = "SVE256"


@pytest.mark.slow
def test_another_fingerprint_is_compared_within_the_tolerance(copied: Path) -> None:
    edit_fingerprints(copied, other_capability)
    edit_manifest(copied, "state_dict.pth", last_logit_bit)
    report = check_fixtures(copied, device="cpu", resume_epochs=0)
    assert report.ok, report.failures
    for mode in (report.metrics_mode, report.logits_mode):
        assert not mode.exact and "cpu_capability: SVE256 -> " in mode.reason


@pytest.mark.slow
def test_a_manifest_without_fingerprints_is_compared_within_the_tolerance(copied: Path) -> None:
    def forget(evaluation: dict[str, Any]) -> None:
        del evaluation["metrics_fingerprint"], evaluation["probe_fingerprint"]

    edit_fingerprints(copied, forget)
    edit_manifest(copied, "state_dict.pth", last_logit_bit)
    report = check_fixtures(copied, device="cpu", resume_epochs=0)
    assert report.ok, report.failures
    assert report.logits_mode == Mode(False, "the manifest records no machine fingerprint")


@pytest.mark.slow
def test_exact_is_demanded_and_says_the_fingerprints_differ(copied: Path, cli: Cli) -> None:
    edit_fingerprints(copied, other_capability)
    edit_manifest(copied, "state_dict.pth", last_logit_bit)
    result = cli("reference", "check", copied, "--resume-epochs", "0", "--exact")
    assert result.exit_code == 1
    metrics_line = next(line for line in result.stdout.splitlines() if line.startswith("metrics:"))
    assert "bit-exact (--exact, although fingerprint differs: cpu_capability: SVE256 -> " in metrics_line
    failures = {(r["file"], r["check"]) for r in check_json_of(cli, copied, "--exact")["failures"]}
    assert failures == {("state_dict.pth", "probe-logits")}


@pytest.mark.slow
def test_atol_and_rtol_replace_the_tolerance(copied: Path, cli: Cli) -> None:
    edit_fingerprints(copied, other_capability)

    def nudge(entry: dict[str, Any]) -> None:
        # 5e-5 more on every logit: inside atol 1e-4, beyond atol 1e-6.
        logits = ProbeLogits(tuple(entry["probe_logits"]["shape"]), entry["probe_logits"]["hex"]).to_tensor()
        entry["probe_logits"]["hex"] = ProbeLogits.from_tensor(logits + 5e-5).hex

    edit_manifest(copied, "model.pth", nudge)
    assert check_json_of(cli, copied)["ok"] is True
    report = check_json_of(cli, copied, "--atol", "1e-6", "--rtol", "0")
    assert report["tolerance"] == {"atol": 1e-6, "rtol": 0.0, "accuracy_examples": 1}
    assert {(r["file"], r["check"]) for r in report["failures"]} == {("model.pth", "probe-logits")}


def check_json_of(cli: Cli, directory: Path, *options: str) -> dict[str, Any]:
    result = cli("reference", "check", directory, "--resume-epochs", "0", "--format", "json", *options)
    assert result.exit_code in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.slow
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_committed_set_passes_on_other_cpu_kernels(committed: Path, capability: str) -> None:
    """torch forced onto other kernels, as on another CPU: the tolerance holds."""
    if capability == "avx2" and "avx2" not in Path("/proc/cpuinfo").read_text(errors="replace"):
        pytest.skip("this CPU has no AVX2 kernels to force")
    environment = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    command = [sys.executable, "-m", "ckpttool", "reference", "check", str(committed / "cnn"), "--resume-epochs", "0"]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    for name in ("metrics:", "logits:"):
        line = next(line for line in lines if line.startswith(name))
        assert "within atol 0.0001 + rtol 0.0001" in line and "fingerprint differs" in line, line
        assert f"ATEN_CPU_CAPABILITY={capability}" in line or "cpu_capability" in line, line


@pytest.mark.slow
def test_a_missing_file_is_named(copied: Path) -> None:
    (copied / "general_checkpoint.tar").unlink()
    report = check_fixtures(copied, device="cpu", resume_epochs=0)
    assert failing(report) == {("general_checkpoint.tar", "file", "exists")}


@pytest.mark.slow
def test_a_manifest_naming_a_file_elsewhere_fails_that_entry(copied: Path) -> None:
    def elsewhere(entry: dict[str, Any]) -> None:
        entry["path"] = "../cnn/state_dict.pth"

    edit_manifest(copied, "state_dict.pth", elsewhere)
    report = check_fixtures(copied, device="cpu", resume_epochs=0)
    assert failing(report) == {("../cnn/state_dict.pth", "file", "exists")}


@pytest.mark.slow
def test_an_empty_manifest_does_not_pass(copied: Path) -> None:
    manifest_path = copied / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = []
    manifest_path.write_text(json.dumps(manifest))
    report = check_fixtures(copied, device="cpu", resume_epochs=0)
    assert failing(report) == {(None, "", "files")}


@pytest.mark.slow
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
    text = " ".join(cli("reference", "check", "--help").stdout.split())
    assert "fingerprint" in text and "Exit 0" in text
    assert "--atol FLOAT RANGE Absolute tolerance" in text and "[default: 0.0001;" in text
    for option in ("--exact", "--rtol", "--resume-epochs", "--device"):
        assert option in text


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 120])
def test_table_fits_the_terminal(copied: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    # Long lines on purpose: a fingerprint that differs (the reason), and a damaged file.
    edit_fingerprints(copied, other_capability)
    flip_weight_byte(copied / "state_dict.pth")
    monkeypatch.setenv("COLUMNS", str(columns))
    result = cli("reference", "check", copied, "--resume-epochs", "0")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns, max(lines, key=len)
    assert "cpu_capability: SVE256 ->" in " ".join(result.stdout.split())  # wrapped, not cut
    if any(line.endswith("--format json shows all)") for line in lines):
        full = check_json_of(cli, copied)
        assert any("CRC-32" in failure["detail"] for failure in full["failures"])
    # Piped with no COLUMNS, nothing is cut.
    monkeypatch.delenv("COLUMNS")
    assert "…" not in cli("reference", "check", copied, "--resume-epochs", "0").stdout
