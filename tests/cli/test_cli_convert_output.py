"""What `convert` says and where it writes: a cast is verified as the exact cast, not as
equality with the source; a destination folder that does not exist is created, as the
README's `out/model.safetensors` examples expect. Ground truth: torch.load of the source
and safetensors' own reader."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from click.testing import Result
from safetensors.torch import load_file

Cli = Callable[..., Result]


def saved_model(tmp_path: Path) -> Path:
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 4))
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    return path


def test_a_cast_is_verified_as_the_exact_cast(cli: Cli, tmp_path: Path) -> None:
    src = saved_model(tmp_path)
    dst = tmp_path / "half.safetensors"
    result = cli("convert", src, dst, "--dtype", "bf16")
    assert result.exit_code == 0, result.stderr
    truth = torch.load(src, weights_only=True)
    floating = [k for k, t in truth.items() if t.is_floating_point()]
    written = load_file(str(dst))
    for key, tensor in truth.items():
        expected = tensor.to(torch.bfloat16) if key in floating else tensor
        assert written[key].dtype == expected.dtype and torch.equal(written[key], expected), key
    (verified,) = [line for line in result.stdout.splitlines() if line.startswith("verified:")]
    assert "every tensor reads back equal to the source" not in verified
    kept = len(truth) - len(floating)
    assert re.search(rf"\b{kept} tensors? reads? back equal to the source\b", verified), verified
    assert f"{len(floating)} cast tensors equal to the exact cast" in verified


def test_shards_land_in_a_folder_that_did_not_exist(cli: Cli, tmp_path: Path) -> None:
    src = saved_model(tmp_path)
    dst = tmp_path / "out" / "model.safetensors"
    result = cli("convert", src, dst, "--shard-size", "300B")
    assert result.exit_code == 0, result.stderr
    assert (dst.parent / "model.safetensors.index.json").is_file()
    read: dict[str, torch.Tensor] = {}
    for shard in sorted(dst.parent.glob("model-*.safetensors")):
        read.update(load_file(str(shard)))
    truth = torch.load(src, weights_only=True)
    assert read.keys() == truth.keys() and all(torch.equal(read[k], truth[k]) for k in truth)


def test_keep_structure_creates_the_folder_too_and_a_failure_removes_it(cli: Cli, tmp_path: Path) -> None:
    src = saved_model(tmp_path)
    dst = tmp_path / "renamed" / "model.pth"
    assert cli("convert", src, dst, "--keep-structure", "--rename", "0.weight=first.weight").exit_code == 0
    assert set(torch.load(dst, weights_only=True)) == {
        "first.weight" if k == "0.weight" else k for k in torch.load(src, weights_only=True)
    }
    failed = tmp_path / "never" / "model.safetensors"
    result = cli("convert", tmp_path / "missing.pth", failed)
    assert result.exit_code == 2
    assert not failed.parent.exists()
