"""`reference train` through click, on the `reference` group itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from ckpttool.errors import DatasetError, UsageError
from ckpttool.reference.cli import reference
from ckpttool.reference.manifest import read_manifest


def invoke(*args: str) -> Result:
    return CliRunner().invoke(reference, ["train", *args])


@pytest.mark.slow
def test_train_writes_fixtures_and_reports_json(tmp_path: Path) -> None:
    result = invoke("--model", "nn", "--epochs", "2", "--out", str(tmp_path), "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema_version"] == 1
    assert (report["model"], report["dataset"], report["device"]) == ("nn", "digits", "cpu")
    assert report["test"]["examples"] == 360 and 0.5 < report["test"]["accuracy"] <= 1
    assert [epoch["epoch"] for epoch in report["epochs"]] == [1, 2]
    manifest = read_manifest(tmp_path)
    assert [f["path"] for f in report["files"]] == [r.path for r in manifest.files]
    assert [f["sha256"] for f in report["files"]] == [r.sha256 for r in manifest.files]
    # Per-epoch loss goes to stderr; no progress bar when stderr is not a terminal.
    assert result.stderr.splitlines()[0].startswith("epoch 1/2: loss ")
    assert "step/s" not in result.stderr and "%|" not in result.stderr


@pytest.mark.slow
def test_train_table_shows_summary_losses_and_files(tmp_path: Path) -> None:
    args = ("--model", "cnn", "--epochs", "1", "--styles", "state-dict,safetensors")
    result = invoke(*args, "--out", str(tmp_path), "--steps-per-epoch", "3", "--optimizer", "sgd")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model:") and "ckpttool.reference.models.CNN" in lines[0]
    assert any(line.startswith("test:") and "accuracy" in line for line in lines)
    assert any("sgd lr 0.001" in line and "3 steps/epoch" in line for line in lines)
    assert any(line.startswith("state_dict.pth ") for line in lines)
    assert any(line.startswith("model.safetensors ") for line in lines)
    assert "(3 steps)" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "manifest.json",
        "model.safetensors",
        "state_dict.pth",
    ]


def test_unknown_style_is_refused_before_training(tmp_path: Path) -> None:
    result = invoke("--styles", "state-dict,onnx", "--out", str(tmp_path / "out"))
    assert isinstance(result.exception, UsageError)
    assert "onnx" in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_missing_dataset_files_are_a_dataset_error(tmp_path: Path) -> None:
    result = invoke("--dataset", "mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"))
    assert isinstance(result.exception, DatasetError)
    assert "--download" in str(result.exception)


def test_torchvision_dataset_needs_data_root(tmp_path: Path) -> None:
    result = invoke("--dataset", "cifar10", "--out", str(tmp_path))
    assert isinstance(result.exception, UsageError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke("--device", "cuda", "--out", str(tmp_path))
    assert isinstance(result.exception, UsageError)


def test_bad_option_values_are_click_usage_errors(tmp_path: Path) -> None:
    for args in (
        ("--model", "lenet"),
        ("--epochs", "0"),
        ("--lr", "0"),
        ("--optimizer", "rmsprop"),
    ):
        result = invoke(*args, "--out", str(tmp_path))
        assert result.exit_code == 2, args


def test_help_documents_options_and_sizes() -> None:
    result = CliRunner().invoke(reference, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--dataset", "--data-root", "--download", "--epochs", "--batch-size"):
        assert option in result.stdout
    for option in ("--lr", "--optimizer", "--seed", "--device", "--out", "--styles", "--format"):
        assert option in result.stdout
    assert "6.4 GB" in result.stdout
    assert "train" in CliRunner().invoke(reference, ["--help"]).stdout


@pytest.mark.slow
def test_importing_the_command_group_does_not_import_torch() -> None:
    code = "import sys, ckpttool.reference.cli; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert output.stdout.strip() == "False"


def test_help_states_the_registry_defaults() -> None:
    from ckpttool.reference.models import get_model_spec

    help_text = CliRunner().invoke(reference, ["train", "--help"]).stdout
    vgg, resnet = get_model_spec("vgg16").defaults, get_model_spec("resnet34").defaults
    assert (vgg.epochs, vgg.batch_size, vgg.lr, vgg.steps_per_epoch) == (1, 32, 1e-4, 8)
    assert "vgg16                                  1 epoch, 32, 1e-4, 8 steps" in help_text
    assert (resnet.epochs, resnet.batch_size, resnet.lr, resnet.steps_per_epoch) == (
        3,
        64,
        1e-3,
        None,
    )
    assert "resnet34                               3 epochs, 64, 1e-3, whole split" in help_text
    for name in ("nn", "cnn", "neural-network", "cifar10-net"):
        assert get_model_spec(name).defaults.epochs == 10
