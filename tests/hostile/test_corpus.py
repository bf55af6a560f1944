"""The generated corpus through every command: hostile files are `dangerous` for scan and
check and run nothing anywhere; the benign controls are not `dangerous`."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.corpus import Sample, benign_samples, file_name, malicious_samples
from support.hostile import assert_no_crash, assert_not_run, only_file, run_cli

_PLACEHOLDER = Path("/nonexistent/PAYLOAD_RAN")
MALICIOUS = {s.name: s for s in malicious_samples(_PLACEHOLDER)}
BENIGN = {s.name: s for s in benign_samples()}


def _written(tmp_path: Path, sample: Sample) -> Path:
    path = tmp_path / file_name(sample)
    path.write_bytes(sample.data)
    return path


def _rebuilt(name: str, marker: Path) -> Sample:
    """The sample again, its payload aimed at this test's marker."""
    return next(s for s in malicious_samples(marker) if s.name == name)


@pytest.mark.slow
@pytest.mark.parametrize("name", MALICIOUS)
def test_every_hostile_file_is_dangerous_and_runs_nowhere(tmp_path: Path, marker: Path, name: str) -> None:
    path = _written(tmp_path, _rebuilt(name, marker))
    scanned = run_cli("scan", "--format", "json", path)
    assert scanned.exit_code == 1, (scanned.stdout[:600], scanned.stderr)
    assert only_file(scanned)["verdict"] == "dangerous"
    checked = run_cli("check", "--format", "json", path)
    assert checked.exit_code == 1, (checked.stdout[:600], checked.stderr)
    out = tmp_path / "out"
    for args in (
        ("inspect", path),
        ("inspect", "--all", "--format", "json", path),
        ("optimizer", path),
        ("diff", path, path),
        ("convert", path, out / "converted.safetensors"),
        ("remap", path, out / "remapped.pt", "--device", "cpu"),
    ):
        outcome = run_cli(*args)
        assert_no_crash(outcome)
        assert outcome.exit_code in (0, 1, 2), (args, outcome)
    assert_not_run(marker)


@pytest.mark.parametrize("name", BENIGN)
def test_benign_controls_are_not_dangerous(tmp_path: Path, name: str) -> None:
    path = _written(tmp_path, BENIGN[name])
    scanned = run_cli("scan", "--format", "json", path)
    assert scanned.exit_code == 0, (scanned.stdout[:800], scanned.stderr)
    assert only_file(scanned)["verdict"] in ("safe", "needs-allowlist")
