"""Hugging Face folders with one weights file (`model.safetensors` or `pytorch_model.bin`,
`config.json` beside it, no index) are one checkpoint to every command.

Ground truth: safetensors' `load_file` and `torch.load` of the folder's file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from safetensors.torch import load_file, save_file
from support.cli import cli_json

Cli = Callable[..., Result]
CONFIG = {"model_type": "tiny", "hidden_size": 6, "architectures": ["TinyModel"]}


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 6)
        self.norm = torch.nn.LayerNorm(6)
        self.head = torch.nn.Linear(6, 3)


def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in Tiny().state_dict().items()}


def hf_folder(folder: Path, weights: str, content: Any = None) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    if weights == "model.safetensors":
        save_file(state_dict(), str(folder / weights), metadata={"format": "pt"})
    else:
        torch.save(state_dict() if content is None else content, folder / weights)
    return folder


@pytest.fixture(params=["model.safetensors", "pytorch_model.bin"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return hf_folder(tmp_path / "tiny-model", request.param)


def truth(folder: Path) -> dict[str, torch.Tensor]:
    file = folder / "model.safetensors"
    if file.exists():
        return load_file(str(file))
    loaded: dict[str, torch.Tensor] = torch.load(folder / "pytorch_model.bin", weights_only=True)
    return loaded


def the_file(folder: Path) -> Path:
    return next(folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists())


def test_inspect_lists_the_files_tensors(cli: Cli, folder: Path) -> None:
    result = cli("inspect", folder, "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = cli_json(result)
    expected = truth(folder)
    rows = {t["key"]: (t["dtype"], t["shape"]) for t in report["weights"]["tensors"]}
    assert rows == {k: (str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in expected.items()}
    assert report["format"] == ("safetensors" if the_file(folder).suffix == ".safetensors" else "torch-zip")


def test_scan_reports_each_file(cli: Cli, folder: Path) -> None:
    """Every file of the folder is an entry; the weights file's is the file's own scan."""
    on_folder, on_file = cli("scan", folder, "--format", "json"), cli("scan", the_file(folder), "--format", "json")
    assert on_folder.exit_code == on_file.exit_code == 0, on_folder.stderr
    config, weights = cli_json(on_folder)["files"]
    assert weights == cli_json(on_file)["files"][0]
    assert weights["path"] == str(the_file(folder)) and weights["verdict"] == "safe"
    assert (config["path"], config["format"], config["verdict"]) == (str(folder / "config.json"), "text", "safe")


def test_check_passes(cli: Cli, folder: Path) -> None:
    result = cli("check", folder, "--finite", "--cpu-only", "--format", "json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert cli_json(result)["ok"] is True


def test_check_like_its_own_file(cli: Cli, folder: Path) -> None:
    result = cli("check", folder, "--like", the_file(folder), "--format", "json")
    assert result.exit_code == 0, result.stdout + result.stderr


def test_diff_against_its_file_and_the_other_layout(cli: Cli, folder: Path, tmp_path: Path) -> None:
    layout = "pytorch_model.bin" if the_file(folder).suffix == ".safetensors" else "model.safetensors"
    other = hf_folder(tmp_path / "other", layout)
    for against in (the_file(folder), other):
        result = cli("diff", folder, against, "--format", "json")
        assert result.exit_code == 0, result.stdout + result.stderr
        report = cli_json(result)
        assert report["identical"] is True
        assert report["equal"] == len(truth(folder))


def test_diff_sees_a_changed_value(cli: Cli, folder: Path, tmp_path: Path) -> None:
    changed = truth(folder)
    changed["head.bias"] = changed["head.bias"] + 1
    save_file(changed, str(tmp_path / "changed.safetensors"))
    result = cli("diff", folder, tmp_path / "changed.safetensors", "--format", "json")
    assert result.exit_code == 1
    assert [m["key"] for m in cli_json(result)["value_mismatch"]] == ["head.bias"]


@pytest.mark.parametrize("to", ["safetensors", "pth"])
def test_convert_writes_the_same_tensors(cli: Cli, folder: Path, tmp_path: Path, to: str) -> None:
    dst = tmp_path / f"out.{to}"
    result = cli("convert", folder, dst, "--to", to)
    assert result.exit_code == 0, result.stderr
    written = load_file(str(dst)) if to == "safetensors" else torch.load(dst, weights_only=True)
    expected = truth(folder)
    assert written.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(written[key], tensor), key


def test_optimizer_of_a_folder_without_one_is_empty(cli: Cli, folder: Path) -> None:
    result = cli("optimizer", folder, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert cli_json(result)["optimizers"] == []


@pytest.mark.slow
def test_optimizer_state_in_the_folders_file(cli: Cli, tmp_path: Path) -> None:
    model = Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    model.head(model.norm(model.embed(torch.tensor([1, 2])))).sum().backward()
    optimizer.step()
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    folder = hf_folder(tmp_path / "trained", "pytorch_model.bin", saved)
    result = cli("optimizer", folder, "--format", "json")
    assert result.exit_code == 0, result.stderr
    (report,) = cli_json(result)["optimizers"]
    truth_state = torch.load(folder / "pytorch_model.bin", weights_only=True)["optimizer"]
    assert [g["lr"] for g in report["param_groups"]] == [g["lr"] for g in truth_state["param_groups"]]
    assert sorted(s["index"] for s in report["state"]) == sorted(truth_state["state"])


def test_safetensors_is_preferred_when_both_files_are_there(cli: Cli, tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "both", "model.safetensors")
    torch.save({"other": torch.zeros(1)}, folder / "pytorch_model.bin")
    report = cli_json(cli("inspect", folder, "--format", "json"))
    assert report["format"] == "safetensors"
    assert {t["key"] for t in report["weights"]["tensors"]} == set(load_file(str(folder / "model.safetensors")))


@pytest.mark.parametrize("contents", [[], ["config.json"], ["config.json", "tokenizer.json"]])
def test_a_folder_without_weights_is_one_line_error(cli: Cli, tmp_path: Path, contents: list[str]) -> None:
    folder = tmp_path / "empty-model"
    folder.mkdir()
    for name in contents:
        (folder / name).write_text("{}")
    for command in ("inspect", "scan", "check", "optimizer"):
        result = cli(command, folder)
        assert result.exit_code == 2, (command, result.stdout)
        (line,) = result.stderr.splitlines()
        assert str(folder) in line and "not a checkpoint" in line, line
