"""Shared test helpers: running the CLI, and a marker file that payloads would create."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from ckpttool.cli import main

REPO = Path(__file__).resolve().parent.parent
COMMITTED_FIXTURES = REPO / "fixtures" / "files"


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Invoke `ckpttool` in-process; stdout and stderr are kept apart."""
    runner = CliRunner()

    def run(*args: Any) -> Result:
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


def cli_json(result: Result) -> Any:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def assert_json_error(result: Result) -> dict[str, Any]:
    """Under `--format json` an error is also a JSON object on stdout, saying what the
    one stderr line says; returns its `error` part."""
    document = json.loads(result.stdout)
    assert set(document) == {"schema_version", "error"}, document
    error: dict[str, Any] = document["error"]
    assert set(error) == {"path", "message", "exit_code"}
    assert error["exit_code"] == result.exit_code
    where = f"{error['path']}: " if error["path"] else ""
    assert result.stderr.splitlines() == [f"ckpttool: error: {where}{error['message']}"]
    return error


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A path that a payload would create; tests assert it never appears."""
    return tmp_path / "PAYLOAD_RAN"


def matches_cut(shown: str, key: str) -> bool:
    """`shown` is `key` with runs of whole parts left out (each one `…`), its leaf kept."""
    pieces = shown.split("…")
    if not key.endswith(pieces[-1]) or not key.startswith(pieces[0]):
        return False
    at = len(pieces[0])
    for piece in pieces[1:]:
        found = key.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
    return True


@pytest.fixture(scope="session")
def dcp_world1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DCP folder written by `torch.distributed.checkpoint.save` (world size 1), once per session."""
    spec = importlib.util.spec_from_file_location("dcp_save", REPO / "tests" / "support" / "dcp.py")
    assert spec is not None and spec.loader is not None
    dcp_save = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dcp_save)
    folder = tmp_path_factory.mktemp("dcp") / "world1"
    dcp_save.save(str(folder))
    return folder
