"""Shared by the reference tests: the digits data (loaded once) and fixture loaders.

Until `reference check` reads fixtures through ckpttool's own code-free reader,
the tests load them with `torch.load(weights_only=True)`: torch's restricted
unpickler, with the model's module classes allowed for whole-model files. The
loaders are handed out as fixtures, which work under any pytest import mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpttool.reference.data import ReferenceData, load_digits
from ckpttool.reference.manifest import FileRecord
from ckpttool.reference.models import ModelSpec, module_classes

FixtureModelLoader = Callable[[Path, FileRecord, ModelSpec], torch.nn.Module]
WeightsLoader = Callable[[Path], Mapping[str, Any]]


@pytest.fixture(scope="session")
def digits() -> ReferenceData:
    return load_digits()


@pytest.fixture(scope="session")
def load_weights_only() -> WeightsLoader:
    """A `CheckpointLoader` for `prove_resume`: torch's restricted unpickler."""
    return _load_weights_only


@pytest.fixture(scope="session")
def load_fixture_model() -> FixtureModelLoader:
    """Rebuilds the model that one fixture file holds, whatever its style."""
    return _load_fixture_model


def _load_weights_only(path: Path) -> Mapping[str, Any]:
    loaded: Mapping[str, Any] = torch.load(path, weights_only=True, map_location="cpu")  # noqa: TID251
    return loaded


def _load_fixture_model(directory: Path, record: FileRecord, spec: ModelSpec) -> torch.nn.Module:
    path = directory / record.path
    if record.format == "safetensors":
        from safetensors.torch import load_file

        return _with_state(spec, load_file(path))
    if record.style == "whole-model":
        with torch.serialization.safe_globals(module_classes(spec.create())):
            model: torch.nn.Module = torch.load(path, weights_only=True, map_location="cpu")  # noqa: TID251
        return model
    saved = _load_weights_only(path)
    state = saved[record.weights_root] if record.weights_root else saved
    return _with_state(spec, state)


def _with_state(spec: ModelSpec, state: Mapping[str, Any]) -> torch.nn.Module:
    model = spec.create()
    model.load_state_dict(state)
    return model
