"""`inspect --root` that names no weights says what is there: an optimizer state and its
tensors, counted against torch.load's own answer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result

Cli = Callable[..., Result]


def training_checkpoint(path: Path) -> Path:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}, path)
    return path


def nested_tensor_count(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, dict):
        return sum(nested_tensor_count(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nested_tensor_count(v) for v in value)
    return 0


@pytest.mark.slow
def test_an_optimizer_root_is_named_with_its_tensors(cli: Cli, tmp_path: Path) -> None:
    path = training_checkpoint(tmp_path / "train.pth")
    truth = torch.load(path, weights_only=True)["optimizer_state_dict"]
    tensors = nested_tensor_count(truth)
    assert tensors == 12  # 4 parameters x (step, exp_avg, exp_avg_sq)
    result = cli("inspect", path, "--root", "optimizer_state_dict")
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "holds no tensors" not in line
    assert f"is an optimizer state ({tensors} tensors: state.0." in line
    assert "ckpttool optimizer" in line and "inspect --all" in line
    nested = cli("inspect", path, "--root", "optimizer_state_dict.state").stderr
    assert f"its {tensors} tensors are nested deeper (0." in nested


def test_a_root_without_tensors_still_says_so(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict(), "config": {"lr": 0.1}}, path)
    result = cli("inspect", path, "--root", "config")
    assert result.exit_code == 2
    assert result.stderr.endswith("--root 'config' holds no tensors\n")
