"""`inspect --tree` shows every tensor: one at the top level (a ViT's `cls_token`, a
TorchScript module's own buffer) is a row of the root, and the top-level rows add up to
the total. Ground truth: the saved state_dict's keys and numels.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result
from support.cli import cli_json

Cli = Callable[..., Result]


class VitLike(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 5, 8))
        self.head = torch.nn.Linear(8, 3)


class WithBuffer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(4))
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x * self.scale)


def expected_top_level(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """(tensors, numel) per top-level name: a module prefix or a tensor of its own."""
    rows: dict[str, tuple[int, int]] = {}
    for key, tensor in state.items():
        head = key.split(".")[0]
        tensors, numel = rows.get(head, (0, 0))
        rows[head] = (tensors + 1, numel + tensor.numel())
    return rows


def check_tree(cli: Cli, path: Path, state: dict[str, torch.Tensor]) -> None:
    report = cli_json(cli("inspect", path, "--tree", "--format", "json"))
    top = [r for r in report["tree"] if r["depth"] == 0]
    assert {r["prefix"]: (r["tensors"], r["numel"]) for r in top} == expected_top_level(state)
    assert {r["prefix"] for r in top if r["kind"] == "tensor"} == {k for k in state if "." not in k}
    total = sum(t.numel() for t in state.values())
    assert sum(r["numel"] for r in top) == report["total"]["total"]["numel"] == total
    assert sum(r["tensors"] for r in top) == len(state)
    rows = list(csv.DictReader(io.StringIO(cli("inspect", path, "--tree", "--format", "csv").stdout)))
    assert [(r["prefix"], r["kind"]) for r in rows[:-1]] == [(r["prefix"], r["kind"]) for r in report["tree"]]
    table = cli("inspect", path, "--tree").stdout.splitlines()
    for key in state:
        if "." not in key:
            assert any(line.split()[0] == key for line in table[2:]), key


def test_top_level_parameters_are_rows_of_the_root(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "vit.pth"
    torch.save(VitLike().state_dict(), path)
    check_tree(cli, path, torch.load(path, weights_only=True))


@pytest.mark.slow
def test_a_torchscript_modules_own_buffer_is_a_row(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, still what people ship
        torch.jit.save(torch.jit.script(WithBuffer()), str(path))
        state = dict(torch.jit.load(str(path)).state_dict())
    check_tree(cli, path, state)


def test_tree_options_without_tree_are_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "vit.pth"
    torch.save(VitLike().state_dict(), path)
    for option in (["--depth", "1"], ["--full-prefix"]):
        result = cli("inspect", path, *option)
        assert (result.exit_code, result.stdout) == (2, "")
        assert result.stderr == f"ckpttool: error: {option[0]} only applies with --tree\n"
        assert cli("inspect", path, *option, "--tree").exit_code == 0
