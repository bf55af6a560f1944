"""Running the CLI on hostile files, and the assertions every hostile case shares.

The contract (DESIGN.md): exit 0 clean, 1 findings, 2 unreadable input, and for 2
exactly one stderr line `ckpttool: error: …` naming the file, never a traceback.
`scan` fails closed: a file it cannot fully decode is either unreadable (2) or
`dangerous` (1) with the error among its problems — never `safe`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from ckpttool.cli import main
from support.cli import assert_one_error_line

CKPTTOOL = Path(sys.executable).with_name("ckpttool")
FileWriter = Callable[[str, bytes], Path]  # the `write` fixture: name, bytes -> path

# Exec'd in a child so the limit covers everything the CLI allocates, and nothing else.
_LIMITED = (
    "import os, resource, sys\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


@dataclass(frozen=True)
class CliOutcome:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.stdout, f"no output; stderr: {self.stderr!r}"
        return json.loads(self.stdout)


def run_cli(*args: object) -> CliOutcome:
    """`ckpttool ARGS` in this process (stdout and stderr kept apart)."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return CliOutcome(result.exit_code, result.stdout, result.stderr)


def run_cli_process(*args: object, memory_limit: int | None = None, timeout: float = 60) -> CliOutcome:
    """`ckpttool ARGS` as a real process, optionally under an address-space limit."""
    command = [str(CKPTTOOL), *(str(a) for a in args)]
    if memory_limit is not None:
        command = [sys.executable, "-c", _LIMITED, str(memory_limit), *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    return CliOutcome(done.returncode, done.stdout, done.stderr)


def scan(path: Path) -> CliOutcome:
    return run_cli("scan", "--format", "json", path)


def only_file(outcome: CliOutcome) -> dict[str, Any]:
    files: list[dict[str, Any]] = outcome.json()["files"]
    assert len(files) == 1
    return files[0]


def global_names(report: dict[str, Any]) -> set[str]:
    return {f"{g['module']}.{g['name']}" for g in report["globals"]}


def global_entry(report: dict[str, Any], qualname: str) -> dict[str, Any]:
    for entry in report["globals"]:
        if f"{entry['module']}.{entry['name']}" == qualname:
            return dict(entry)
    raise AssertionError(f"{qualname} not among the globals {sorted(global_names(report))}")


# -- assertions ------------------------------------------------------------------------------


def assert_no_crash(outcome: CliOutcome) -> None:
    assert "Traceback" not in outcome.stderr, outcome.stderr[-2000:]
    assert "internal error" not in outcome.stderr, outcome.stderr
    assert "RecursionError" not in outcome.stderr and "MemoryError" not in outcome.stderr


def assert_inspect_refuses(path: Path) -> str:
    """`inspect` of a broken file: a typed error, exit 2, one line."""
    return assert_one_error_line(run_cli("inspect", "--format", "json", path), path.name, fmt=None)


def assert_inspect_harmless(path: Path) -> CliOutcome:
    """`inspect` of a decodable but hostile file: it describes it (0) or refuses it (2), cleanly."""
    outcome = run_cli("inspect", "--format", "json", path)
    if outcome.exit_code == 0:
        assert outcome.json()["schema_version"] == 1
        assert_no_crash(outcome)
    else:
        assert_one_error_line(outcome, path.name, fmt=None)
    return outcome


def assert_scan_fails_closed(path: Path) -> dict[str, Any] | None:
    """`scan` of a file it cannot fully read: exit 2, or exit 1 and `dangerous` with problems."""
    outcome = scan(path)
    if outcome.exit_code == 2:
        assert_one_error_line(outcome, path.name, fmt=None)
        return None
    assert outcome.exit_code == 1, f"exit {outcome.exit_code}: {outcome.stdout[:800]}"
    assert_no_crash(outcome)
    report = only_file(outcome)
    assert report["verdict"] == "dangerous"
    assert report["problems"], "a scan that stopped at an error must say so"
    return report


def assert_dangerous(path: Path, *called: str) -> dict[str, Any]:
    """`scan`: exit 1, verdict dangerous, each of `called` listed as a dangerous global."""
    outcome = scan(path)
    assert outcome.exit_code == 1, f"exit {outcome.exit_code}: {outcome.stdout[:800]} {outcome.stderr}"
    assert_no_crash(outcome)
    report = only_file(outcome)
    assert report["verdict"] == "dangerous", report
    for qualname in called:
        assert global_entry(report, qualname)["verdict"] == "dangerous", report
    return report


def assert_not_safe(path: Path) -> CliOutcome:
    """`scan` must not pass the file: exit 1 or 2, never 0 with `safe`."""
    outcome = scan(path)
    assert_no_crash(outcome)
    assert outcome.exit_code in (1, 2), f"exit {outcome.exit_code}: {outcome.stdout[:1200]}"
    if outcome.exit_code == 1:
        assert only_file(outcome)["verdict"] == "dangerous"
    else:
        assert_one_error_line(outcome, path.name, fmt=None)
    return outcome


def assert_not_run(marker: Path) -> None:
    assert not marker.exists(), f"the payload ran: {marker} was created"


# -- ground truth ---------------------------------------------------------------------------

LOAD_WARNINGS = (
    "Detected pickle protocol",  # any protocol but 2
    "TypedStorage is deprecated",  # quantized tensors are rebuilt through TypedStorage
    "Validating sparse tensor invariants",  # sparse tensors, checked because weights_only=True
)


_TORCH_LOAD = "import sys, torch\ntry:\n    torch.load(sys.argv[1], weights_only=False)\nexcept Exception:\n    pass\n"


def torch_load_runs_it(path: Path, marker: Path) -> bool:
    """Whether `torch.load(weights_only=False)` of the file, in a child process, creates the
    marker (removed again, so that ckpttool's own runs can be checked after it)."""
    subprocess.run([sys.executable, "-c", _TORCH_LOAD, str(path)], check=False, timeout=120, capture_output=True)
    ran = marker.exists()
    if ran:
        marker.unlink()
    return ran


def torch_accepts(path: Path) -> bool:
    """Whether `torch.load(weights_only=True)` loads the file (the scan's ground truth).

    Only for files without a payload, or whose payload torch's allowlist refuses.
    """
    import torch  # only the tests that compare with torch pay for importing it

    try:
        with warnings.catch_warnings():
            # What torch says while loading files it accepts; none of it is a refusal.
            for message in LOAD_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=UserWarning)
            torch.load(path, weights_only=True, map_location="cpu")  # noqa: TID251 - the oracle
    except Exception:  # noqa: BLE001 - any refusal counts
        return False
    return True
