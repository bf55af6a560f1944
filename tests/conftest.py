"""Fixtures every test folder may use: the CLI in-process, a payload marker, a DCP folder.

Helpers are in the `support` package; this file holds only fixtures."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from support.paths import REPO

from ckpttool.cli import main


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Invoke `ckpttool` in-process; stdout and stderr are kept apart."""
    runner = CliRunner()

    def run(*args: Any) -> Result:
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A path that a payload would create; tests assert it never appears."""
    return tmp_path / "PAYLOAD_RAN"


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
