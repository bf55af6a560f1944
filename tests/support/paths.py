"""Where the repository, its fixtures and the committed fixture files are."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES_DIR = REPO / "fixtures"
COMMITTED_DIR = FIXTURES_DIR / "files"
