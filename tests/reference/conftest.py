"""The digits data, loaded once for every reference test."""

from __future__ import annotations

import pytest

from ckpttool.reference.data import ReferenceData, load_digits


@pytest.fixture(scope="session")
def digits() -> ReferenceData:
    return load_digits()
