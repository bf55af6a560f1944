"""Every test under tests/ops leaves the committed fixtures byte for byte as they were."""

from __future__ import annotations

from support.ops import committed_fixtures_unchanged

__all__ = ["committed_fixtures_unchanged"]
