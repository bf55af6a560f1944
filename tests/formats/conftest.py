"""Real DCP folders, written once per session: world size 2 spawned (world size 1 is
`dcp_world1` of tests/conftest.py, shared with the CLI tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def dcp_world2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dcp") / "world2"
    subprocess.run([sys.executable, str(HERE.parent / "support" / "dcp.py"), str(folder), "2"], check=True, timeout=600)
    return folder
