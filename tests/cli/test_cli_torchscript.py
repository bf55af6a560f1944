"""TorchScript archives: the weights are exactly `torch.jit.load(f).state_dict()`'s keys,
read from the class declarations in the archive's `code/` (never executed), and plain
tensor attributes are listed apart and never written by `convert`.

`torch.jit.load` is the ground truth here, run on files the test itself scripted.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result
from safetensors import safe_open
from safetensors.torch import load_file
from support.cli import cli_json
from torch import nn

Cli = Callable[..., Result]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)
        self._state = torch.zeros(2, 4)  # a plain tensor attribute: in no state_dict
        self.register_buffer("scale", torch.ones(1), persistent=False)  # TorchScript keeps it anyway

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.lin(x)) + self._state.sum() * self.scale


class Scripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.weight = nn.Parameter(torch.ones(2))
        self.register_buffer("offset", torch.zeros(3))
        self._context = torch.zeros(5)
        self.head = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.block(x)) * self.weight
        return y + self._context.sum() + self.offset.sum()


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jit") / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, still what people ship
        torch.jit.save(torch.jit.script(Scripted()), str(path))
    return path


def jit_load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module: torch.jit.ScriptModule = torch.jit.load(str(path))
    return module


@pytest.mark.slow
def test_weights_are_the_state_dict_keys(cli: Cli, scripted: Path) -> None:
    report = cli_json(cli("inspect", scripted, "--format", "json"))
    module = jit_load(scripted)
    assert report["format"] == "torchscript"
    assert [t["key"] for t in report["weights"]["tensors"]] == list(module.state_dict())
    params = {name for name, _ in module.named_parameters()}
    buffers = {name for name, _ in module.named_buffers()}
    roles = {t["key"]: t["role"] for t in report["weights"]["tensors"]}
    assert {k for k, r in roles.items() if r == "parameter"} == params
    assert {k for k, r in roles.items() if r == "buffer"} == buffers
    assert report["weights"]["roles"] == "declared"


def test_plain_tensor_attributes_are_listed_apart(cli: Cli, scripted: Path) -> None:
    report = cli_json(cli("inspect", scripted, "--format", "json"))
    module = jit_load(scripted)
    attributes = {t["key"]: t for t in report["weights"]["attributes"]}
    assert set(attributes) == {"_context", "block._state"}
    assert attributes["_context"]["shape"] == list(module._context.shape)
    assert attributes["block._state"]["shape"] == list(module.block._state.shape)
    assert not set(attributes) & set(module.state_dict())


def test_table_names_the_attributes(cli: Cli, scripted: Path) -> None:
    out = cli("inspect", scripted).stdout
    assert re.search(r"^attributes:\s+2 tensors in no state_dict \(\d+ B\): _context, block\._state$", out, re.M)
    assert re.search(r"^roles:\s+as the archive's code/ declares them$", out, re.M)


def test_convert_writes_only_the_state_dict(cli: Cli, scripted: Path, tmp_path: Path) -> None:
    out = tmp_path / "scripted.safetensors"
    result = cli("convert", scripted, out)
    assert result.exit_code == 0, result.stderr
    module = jit_load(scripted)
    with safe_open(str(out), framework="pt") as f:
        assert set(f.keys()) == set(module.state_dict())
    # What convert wrote loads into a fresh eager model: nothing missing, no attribute extra.
    state = load_file(str(out))
    missing, unexpected = Scripted().load_state_dict(state, strict=False)
    assert unexpected == ["block.scale"]  # non-persistent in eager mode, kept by TorchScript
    assert missing == []
    for key, tensor in module.state_dict().items():
        assert torch.equal(state[key], tensor), key


@pytest.mark.parametrize("name", ["cnn_scripted.pt", "neural_network_traced.pt"])
def test_committed_scripted_and_traced_fixtures(cli: Cli, name: str) -> None:
    path = Path(__file__).resolve().parents[2] / "fixtures" / "files" / name
    report = cli_json(cli("inspect", path, "--format", "json"))
    module = jit_load(path)
    assert [t["key"] for t in report["weights"]["tensors"]] == list(module.state_dict())
    assert report["weights"]["attributes"] == []
