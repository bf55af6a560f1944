"""The files a trainer leaves beside the weights: an optimizer's state_dict alone (Hugging
Face Trainer's `checkpoint-N/optimizer.pt`, accelerate's `save_state` `optimizer.bin`), and
training dicts whose weights sit under a name ckpttool does not know, after the optimizer.
Each file is made here with torch as those libraries make it (`torch.save` of
`optimizer.state_dict()`; checked against the files transformers 5.25's Trainer and
accelerate 1.16's `save_state` wrote: the same pickle, a `state` of per-parameter
`{step, exp_avg, exp_avg_sq}` and the `param_groups`) and compared with torch.load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result
from support.cli import assert_one_error_line, cli_json
from support.groundtruth import torch_load_trusted
from torch import nn

Cli = Callable[..., Result]


def _stepped_adamw() -> tuple[nn.Module, torch.optim.Optimizer]:
    """Trainer's AdamW: weights in one group (decayed), biases and norms in another."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}])
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.fixture
def optimizer_file(tmp_path: Path) -> Path:
    _, optimizer = _stepped_adamw()
    path = tmp_path / "optimizer.pt"
    torch.save(optimizer.state_dict(), path)
    return path


def test_an_optimizer_file_holds_no_weights(cli: Cli, optimizer_file: Path) -> None:
    """Before, a parameter's `state.0` ({step, exp_avg, exp_avg_sq}) was taken for the weights."""
    truth = torch_load_trusted(optimizer_file)
    assert set(truth) == {"state", "param_groups"}
    report = cli_json(cli("inspect", optimizer_file, "--format", "json"))
    assert (report["weights"]["root"], report["weights"]["tensors"]) == (None, [])
    every = {t["key"] for t in report["tensors"]}
    assert every == {f"state.{i}.{name}" for i, s in truth["state"].items() for name in s}
    assert any("optimizer's state_dict" in note for note in report["notes"])
    text = cli("inspect", optimizer_file).stdout
    assert "weights:             none found" in text and "`ckpttool optimizer` shows it" in text
    described = cli_json(cli("optimizer", optimizer_file, "--format", "json"))["optimizers"]
    assert [(o["path"], o["type"], len(o["state"])) for o in described] == [("", "AdamW", len(truth["state"]))]


def test_converting_an_optimizer_file_says_what_it_is(cli: Cli, optimizer_file: Path, tmp_path: Path) -> None:
    result = cli("convert", optimizer_file, tmp_path / "out.safetensors")
    assert_one_error_line(result, "no weights found", "optimizer's state_dict", path=optimizer_file)
    assert not (tmp_path / "out.safetensors").exists()


def test_weights_under_an_unknown_name_after_the_optimizer(cli: Cli, tmp_path: Path) -> None:
    """{'optimizer': ..., 'encoder': state_dict}: the search passes over the optimizer."""
    model, optimizer = _stepped_adamw()
    path = tmp_path / "train.pt"
    torch.save({"optimizer": optimizer.state_dict(), "encoder": model.state_dict(), "step": 1}, path)
    truth = torch_load_trusted(path)["encoder"]
    report = cli_json(cli("inspect", path, "--format", "json"))
    assert report["weights"]["root"] == "encoder"
    shown = [(t["key"], t["dtype"], t["shape"]) for t in report["weights"]["tensors"]]
    assert shown == [(k, str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in truth.items()]
    described = cli_json(cli("optimizer", path, "--format", "json"))["optimizers"]
    assert [(o["path"], o["type"]) for o in described] == [("optimizer", "AdamW")]
