"""Real DCP folders, written once per session: world size 1 here, world size 2 spawned."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def dcp_world1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.spec_from_file_location("dcp_save", HERE / "dcp_save.py")
    assert spec is not None and spec.loader is not None
    dcp_save = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dcp_save)
    folder = tmp_path_factory.mktemp("dcp") / "world1"
    dcp_save.save(str(folder))
    return folder


@pytest.fixture(scope="session")
def dcp_world2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dcp") / "world2"
    subprocess.run([sys.executable, str(HERE / "dcp_save.py"), str(folder), "2"], check=True, timeout=600)
    return folder
