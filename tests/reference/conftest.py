"""Shared by the reference tests: the digits data, a fresh cnn fixture set, loaders.

Fixtures are read the way `reference check` reads them: through ckpttool's own
code-free reader (`ckpttool.materialize`). `torch.load(weights_only=True)` appears only as
ground truth, to show that the reader gives what torch gives. The loaders are
handed out as pytest fixtures, which work under any import mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpttool.materialize import load_state_dict
from ckpttool.reference.check import read_checkpoint_through_ckpttool
from ckpttool.reference.data import ReferenceData, load_digits
from ckpttool.reference.fixtures import FixtureSet, build_fixtures
from ckpttool.reference.manifest import FileRecord
from ckpttool.reference.models import ModelSpec, module_classes
from ckpttool.reference.train import TrainConfig

FixtureModelLoader = Callable[[Path, FileRecord, ModelSpec], torch.nn.Module]
WeightsLoader = Callable[[Path], Mapping[str, Any]]

COMMITTED = Path(__file__).resolve().parents[2] / "fixtures" / "reference"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Train and evaluate on one thread, as fast for these small models as two.

    torch's worker threads wait for each other at every op: on a runner whose cores
    are shared with other jobs, two threads run several times slower than one. The
    numbers checked do not depend on it (evaluation always runs on one thread).
    """
    with one_thread():
        yield


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits() -> ReferenceData:
    return load_digits()


@pytest.fixture(scope="session")
def cnn_fixtures(digits: ReferenceData, tmp_path_factory: pytest.TempPathFactory) -> FixtureSet:
    """A fresh cnn set of every style, with a periodic checkpoint at epoch 2 of 3."""
    directory = tmp_path_factory.mktemp("cnn")
    # Session fixtures are set up before the module's `one_torch_thread`.
    with one_thread():
        return build_fixtures(TrainConfig.for_model("cnn", epochs=3), digits, directory, checkpoint_every=2)


@pytest.fixture(scope="session")
def committed() -> Path:
    """The committed fixture sets (`fixtures/reference/generate.py` rebuilds them)."""
    return COMMITTED


@pytest.fixture(scope="session")
def read_through_ckpttool() -> WeightsLoader:
    """A `CheckpointLoader` for `prove_resume` that never runs code from the file."""
    return read_checkpoint_through_ckpttool


@pytest.fixture(scope="session")
def load_fixture_model() -> FixtureModelLoader:
    """Rebuilds the model that one fixture file holds, whatever its style, via ckpttool."""
    return _load_fixture_model


@pytest.fixture(scope="session")
def torch_load_ground_truth() -> Callable[[Path, ModelSpec], Any]:
    """What torch itself restores from a fixture: the ground truth, never the loader."""
    return _torch_load


def _load_fixture_model(directory: Path, record: FileRecord, spec: ModelSpec) -> torch.nn.Module:
    model = spec.create()
    model.load_state_dict(load_state_dict(str(directory / record.path), root=record.weights_root))
    return model


def _torch_load(path: Path, spec: ModelSpec) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    # A whole-model file needs its module classes allowed; harmless for the others.
    with torch.serialization.safe_globals(module_classes(spec.create())):
        return torch.load(path, weights_only=True, map_location="cpu")  # noqa: TID251
