"""`import ckpttool`: the public API, each call checked against the CLI's JSON for the same
file and against what torch itself reads (torch.load, safetensors' own loader).

`import ckpttool` must stay cheap: its names resolve on first use (PEP 562), so neither
torch nor any command's module is imported by the import itself.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from groundtruth import COMMITTED_DIR, storage_locations, tensors_equal, torch_load_trusted
from safetensors.torch import load_file

import ckpttool
from ckpttool.cli import main
from ckpttool.ops.convert import Ranks

STATE_DICT = COMMITTED_DIR / "cnn_state_dict.pth"
CHECKPOINT = COMMITTED_DIR / "checkpoint.pth.tar"  # {"state_dict": ..., "epoch": ...}
SAFETENSORS = COMMITTED_DIR / "cnn.safetensors"
OPTIMIZER = COMMITTED_DIR / "cnn_model_optimizer.pt"
ON_CUDA = COMMITTED_DIR / "cnn_state_dict_cuda0.pth"
FACES = ["ckpttool", *(f"ckpttool.ops.{job}" for job in ("inspect", "safety", "convert", "rewrite", "compare"))]


def cli_json(*args: Any) -> Any:
    result = CliRunner().invoke(main, [*map(str, args), "--format", "json"], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.stderr
    return json.loads(result.stdout)


def assert_same_tensors(ours: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(truth)
    for key, tensor in truth.items():
        assert tensors_equal(ours[key], tensor), key


@pytest.mark.parametrize("face", FACES)
def test_every_exported_name_resolves(face: str) -> None:
    module = importlib.import_module(face)
    assert module.__all__ == sorted(module.__all__) and module.__all__
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{face}.{name}"
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018 -- the lookup itself is what is tested


@pytest.mark.parametrize("name", ckpttool.__all__)
def test_public_names_are_documented(name: str) -> None:
    assert getattr(ckpttool, name).__doc__, name


def test_import_is_cheap() -> None:
    program = (
        "import sys, ckpttool; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy') or m.startswith('ckpttool.')))"
    )
    loaded = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['ckpttool.lazy']"


def test_read_checkpoint_and_find_weights_agree_with_torch() -> None:
    checkpoint = ckpttool.read_checkpoint(str(CHECKPOINT))
    weights = ckpttool.find_weights(checkpoint.root)
    truth = torch_load_trusted(CHECKPOINT)["state_dict"]
    assert isinstance(checkpoint, ckpttool.Checkpoint) and isinstance(weights, ckpttool.Weights)
    assert (weights.root, weights.kind) == ("state_dict", "state_dict")
    assert {t.key: tuple(t.tensor.shape) for t in weights.tensors} == {k: tuple(v.shape) for k, v in truth.items()}


def test_inspect_checkpoint_is_what_the_command_shows() -> None:
    report = ckpttool.inspect_checkpoint(str(CHECKPOINT))
    shown = cli_json("inspect", CHECKPOINT)
    assert isinstance(report, ckpttool.InspectReport)
    assert report.format == shown["format"] == "torch-zip"
    assert report.weights_root == shown["weights"]["root"]
    rows = [(r.key, list(r.shape), r.dtype) for r in report.weights]
    assert rows == [(t["key"], t["shape"], t["dtype"]) for t in shown["weights"]["tensors"]]
    truth = torch_load_trusted(CHECKPOINT)["state_dict"]
    assert rows == [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in truth.items()]


def test_scan_file_and_scan_paths_give_the_command_s_verdicts() -> None:
    scan = ckpttool.scan_file(str(STATE_DICT))
    assert isinstance(scan, ckpttool.FileScan) and scan.verdict == "safe"
    folder = COMMITTED_DIR / "sharded_safetensors"
    entries = ckpttool.scan_paths([str(STATE_DICT), str(folder), str(COMMITTED_DIR / "missing.pth")])
    shown = cli_json("scan", STATE_DICT, folder, COMMITTED_DIR / "missing.pth")["files"]
    assert [(e.path, e.verdict) for e in entries] == [(f["path"], f["verdict"]) for f in shown]
    assert isinstance(entries[-1], ckpttool.UnreadableFile)


def test_convert_writes_what_torch_reads(tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    report = ckpttool.convert(str(STATE_DICT), str(out))
    assert isinstance(report, ckpttool.ConvertReport) and report.outputs == [str(out)]
    assert_same_tensors(load_file(out), torch_load_trusted(STATE_DICT))
    pth = tmp_path / "half.pth"
    ckpttool.convert(str(STATE_DICT), str(pth), ckpttool.ConvertOptions(to="pth", dtype="float16"))
    truth = {k: v.to(torch.float16) for k, v in torch_load_trusted(STATE_DICT).items()}
    assert_same_tensors(torch_load_trusted(pth), truth)


def test_diff_is_what_the_command_shows() -> None:
    report = ckpttool.diff(str(STATE_DICT), str(SAFETENSORS))
    shown = cli_json("diff", STATE_DICT, SAFETENSORS)
    assert isinstance(report, ckpttool.DiffReport)
    assert (report.identical, report.equal) == (shown["identical"], shown["equal"])
    keys_only = ckpttool.diff(str(STATE_DICT), str(CHECKPOINT), ckpttool.DiffOptions(keys_only=True))
    assert keys_only.identical is None and not keys_only.only_in_a and not keys_only.only_in_b


def test_check_and_check_paths_are_what_the_command_shows() -> None:
    report = ckpttool.check(str(STATE_DICT), ckpttool.CheckOptions(finite=True, cpu_only=True))
    shown = cli_json("check", STATE_DICT, "--finite", "--cpu-only")["files"][0]
    assert isinstance(report, ckpttool.CheckReport)
    assert report.ok() is shown["ok"] is True and report.findings == [] == shown["findings"]
    on_cuda, missing = ckpttool.check_paths([str(ON_CUDA), str(COMMITTED_DIR / "missing.pth")])
    shown_both = cli_json("check", ON_CUDA, COMMITTED_DIR / "missing.pth")["files"]
    assert [r.ok() for r in (on_cuda, missing)] == [f["ok"] for f in shown_both] == [True, False]
    assert missing.readable is False


def test_remap_moves_every_storage_as_torch_sees_it(tmp_path: Path) -> None:
    out = tmp_path / "cpu.pth"
    assert storage_locations(ON_CUDA) == {"cuda:0"}
    report = ckpttool.remap(str(ON_CUDA), str(out), device="cpu")
    assert isinstance(report, ckpttool.RemapReport) and report.changed
    assert storage_locations(out) == {"cpu"}
    assert_same_tensors(torch_load_trusted(out), torch_load_trusted(ON_CUDA))


def test_optimizers_agree_with_the_command_and_torch() -> None:
    (report,) = ckpttool.optimizers(str(OPTIMIZER))
    (shown,) = cli_json("optimizer", OPTIMIZER)["optimizers"]
    truth = torch_load_trusted(OPTIMIZER)["optimizer"]
    assert isinstance(report, ckpttool.OptimizerReport)
    assert (report.type, report.path) == (shown["type"], shown["path"]) == ("Adam", "optimizer")
    assert [s.index for s in report.state] == sorted(truth["state"])
    assert report.param_groups[0]["lr"] == truth["param_groups"][0]["lr"]


def test_load_state_dict_and_load_give_what_torch_load_gives() -> None:
    assert_same_tensors(ckpttool.load_state_dict(str(STATE_DICT)), torch_load_trusted(STATE_DICT))
    everything, truth = ckpttool.load(str(CHECKPOINT)), torch_load_trusted(CHECKPOINT)
    assert set(everything) == set(truth) and everything["epoch"] == truth["epoch"]
    assert_same_tensors(everything["state_dict"], truth["state_dict"])


def test_every_failure_is_a_ckpt_error_naming_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    for call in (ckpttool.read_checkpoint, ckpttool.inspect_checkpoint, ckpttool.load_state_dict):
        with pytest.raises(ckpttool.CkptError) as caught:
            call(str(garbage))
        assert str(garbage) in str(caught.value)
    with pytest.raises(ckpttool.CkptError, match="exists"):
        ckpttool.convert(str(STATE_DICT), str(garbage))


def test_the_library_reads_no_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Called from a program torchrun started, convert is one process unless given ranks:
    no refusal, no process group set up behind the caller's back."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "model.safetensors"
    ckpttool.convert(str(STATE_DICT), str(out))
    assert_same_tensors(load_file(out), torch_load_trusted(STATE_DICT))
    assert not torch.distributed.is_initialized()
    shared = ckpttool.ConvertOptions(ranks=Ranks(0, 2))
    with pytest.raises(ckpttool.CkptError, match="only conversions into or out of a DCP folder"):
        ckpttool.convert(str(STATE_DICT), str(tmp_path / "shared.safetensors"), shared)
