"""Fixtures every test folder may use: the CLI in-process, a payload marker, DCP folders.

Helpers are in the `support` package; this file holds only fixtures."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from support.paths import REPO

from ckpttool.cli import main

SUPPORT = REPO / "tests" / "support"

# Session fixtures that cost more than a fast run may spend: every test that needs one is
# slow, also where the fixture's cost lands on a test that is not slow itself.
SLOW_FIXTURES = frozenset({"dcp_world2"})  # two spawned ranks on gloo


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
    """A DCP folder written by `torch.distributed.checkpoint.save` (world size 1), once per
    session; tests only read it (copy it to damage it)."""
    from support.dcp import save  # torch.distributed: imported only by the tests that need it

    folder = tmp_path_factory.mktemp("dcp") / "world1"
    save(str(folder))
    return folder


@pytest.fixture(scope="session")
def dcp_world2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same state saved by 2 spawned ranks (uneven shards), once per session; read only."""
    folder = tmp_path_factory.mktemp("dcp") / "world2"
    subprocess.run([sys.executable, str(SUPPORT / "dcp.py"), str(folder), "2"], check=True, timeout=600)
    return folder
