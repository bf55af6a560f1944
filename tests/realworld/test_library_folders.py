"""Folders other libraries save with one weights file under their own name: diffusers'
`save_pretrained` (diffusion_pytorch_model.safetensors or .bin beside config.json) and
peft's adapters (adapter_model.safetensors or .bin beside adapter_config.json). Each is one
checkpoint, read as that file, as the library loads it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result
from safetensors.torch import load_file, save_file
from support.cli import cli_json
from support.groundtruth import torch_load_trusted

Cli = Callable[..., Result]
STATE = {
    "down_blocks.0.resnets.0.conv1.weight": torch.arange(72, dtype=torch.float32).reshape(2, 4, 3, 3),
    "base_model.model.q.lora_A.weight": torch.ones(2, 8, dtype=torch.float16),
}


def _save(folder: Path, name: str, config: str) -> Path:
    folder.mkdir()
    (folder / config).write_text(json.dumps({"_class_name": "UNet2DModel", "r": 2}))
    path = folder / name
    if name.endswith(".safetensors"):
        save_file(STATE, str(path))
    else:
        torch.save(STATE, path)
    return path


def _truth(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    loaded: dict[str, torch.Tensor] = torch_load_trusted(path)
    return loaded


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("diffusion_pytorch_model.safetensors", "config.json"),
        ("diffusion_pytorch_model.bin", "config.json"),
        ("adapter_model.safetensors", "adapter_config.json"),
        ("adapter_model.bin", "adapter_config.json"),
    ],
)
def test_the_folder_is_its_weights_file(cli: Cli, tmp_path: Path, name: str, config: str) -> None:
    path = _save(tmp_path / "saved", name, config)
    truth = _truth(path)
    inspected = cli("inspect", path.parent, "--format", "json")
    assert inspected.exit_code == 0, inspected.output
    tensors = {t["key"]: (t["dtype"], t["shape"]) for t in cli_json(inspected)["weights"]["tensors"]}
    assert tensors == {k: (str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in truth.items()}
    checked = cli("check", path.parent, "--format", "json")
    assert checked.exit_code == 0, checked.output
    assert cli_json(checked)["files"][0]["ok"] is True


def test_a_folder_of_several_checkpoints_names_what_it_looked_for(cli: Cli, tmp_path: Path) -> None:
    """Lightning's and timm's checkpoint folders hold several files: each is one checkpoint."""
    (tmp_path / "last.ckpt").write_bytes(b"")
    result = cli("inspect", tmp_path)
    assert result.exit_code == 2
    assert "model.safetensors, pytorch_model.bin (or diffusers' or peft's)" in result.stderr
    assert result.stderr.rstrip().endswith("not a checkpoint (name its files)")
