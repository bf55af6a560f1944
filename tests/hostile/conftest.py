"""Fixtures for the hostile-input tests: a file writer (the payload `marker` is tests/conftest.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.hostile import FileWriter


@pytest.fixture
def write(tmp_path: Path) -> FileWriter:
    """Write bytes to `tmp_path/name` and return the path."""

    def write_file(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return write_file
