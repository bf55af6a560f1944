"""Loading reference fixtures back with torch, for the tests to compare against.

Until `reference check` reads fixtures through ckpttool's own code-free reader,
the tests load them with `torch.load(weights_only=True)`: torch's restricted
unpickler, with the model's module classes allowed for whole-model files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ckpttool.reference.manifest import FileRecord
from ckpttool.reference.models import ModelSpec, module_classes


def load_weights_only(path: Path) -> Mapping[str, Any]:
    """A `CheckpointLoader` for `prove_resume`: torch's restricted unpickler."""
    loaded: Mapping[str, Any] = torch.load(path, weights_only=True, map_location="cpu")  # noqa: TID251
    return loaded


def load_fixture_model(directory: Path, record: FileRecord, spec: ModelSpec) -> torch.nn.Module:
    """Rebuild the model that one fixture file holds, whatever its style."""
    path = directory / record.path
    if record.format == "safetensors":
        from safetensors.torch import load_file

        return _with_state(spec, load_file(path))
    if record.style == "whole-model":
        with torch.serialization.safe_globals(module_classes(spec.create())):
            model: torch.nn.Module = torch.load(path, weights_only=True, map_location="cpu")  # noqa: TID251
        return model
    saved = load_weights_only(path)
    state = saved[record.weights_root] if record.weights_root else saved
    return _with_state(spec, state)


def _with_state(spec: ModelSpec, state: Mapping[str, Any]) -> torch.nn.Module:
    model = spec.create()
    model.load_state_dict(state)
    return model
