"""Shared test helpers: running the CLI, and a marker file that payloads would create."""

from __future__ import annotations

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


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A path that a payload would create; tests assert it never appears."""
    return tmp_path / "PAYLOAD_RAN"
