"""`scan DIR` and `check DIR` read every file under the folder, each an entry of the report.

Whatever `inspect` takes as the folder's checkpoint, a loader reads the files beside it
(transformers' `pytorch_model.bin` when safetensors are off, its Trainer's
`training_args.bin`, `optimizer.pt`, `scheduler.pt`, `rng_state.pth` on resume). Ground
truth: the payload planted in such a file runs under `torch.load(weights_only=False)` in a
subprocess, and the files holding a pickle are those torch.save wrote (a zip with a
`data.pkl`), found with zipfile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from safetensors.torch import save_file
from support.cli import cli_json
from support.ops import ExecPayload

from ckpttool.errors import CkptError
from ckpttool.formats import dcp_format, dcp_metadata, registry
from ckpttool.formats.registry import open_path
from ckpttool.ops.compare import CheckOptions, check
from ckpttool.ops.safety import scan_file, scan_opened

Cli = Callable[..., Result]
REFERENCE = Path(__file__).resolve().parents[2] / "fixtures" / "reference"
SHARDED = Path(__file__).resolve().parents[2] / "fixtures" / "files" / "sharded_bin"
TRAINER_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth")


def hf_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 4}))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
    (folder / "README.md").write_text("# tiny\n")
    save_file({"w": torch.ones(2, 2)}, str(folder / "model.safetensors"))
    return folder


def plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.zeros(2), "payload": ExecPayload(marker)}, path)
    return path


def payload_fires(path: Path, marker: Path) -> bool:
    """The naive loader, in a subprocess: whether the planted payload ran."""
    load = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", load], check=True, capture_output=True, timeout=120)
    fired = marker.exists()
    marker.unlink(missing_ok=True)
    return fired


def entries(result: Result) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in cli_json(result)["files"]}


@pytest.mark.slow
@pytest.mark.parametrize(
    "planted", ["pytorch_model.bin", "extra_state.pt", *(f"checkpoint-500/{n}" for n in TRAINER_FILES)]
)
def test_a_payload_beside_safe_weights_fails_scan_and_check(cli: Cli, tmp_path: Path, planted: str) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    folder = hf_folder(tmp_path / "model")
    bad = plant(folder / planted, marker)
    assert payload_fires(bad, marker)
    result = cli("scan", folder, "--format", "json")
    assert result.exit_code == 1, result.stderr
    found = entries(result)
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    assert sorted(found) == files
    assert {p: f["verdict"] for p, f in found.items() if f["verdict"] != "safe"} == {str(bad): "dangerous"}
    assert found[str(folder / "model.safetensors")]["format"] == "safetensors"
    for name in ("config.json", "tokenizer.json", "README.md"):
        assert (found[str(folder / name)]["format"], found[str(folder / name)]["pickles"]) == ("text", 0)
    checked = cli("check", folder, "--format", "json")
    assert checked.exit_code == 1
    (finding,) = [f for f in cli_json(checked)["files"][0]["findings"] if f["severity"] == "error"]
    assert finding["message"].startswith(f"{planted}: scan calls this file dangerous"), finding
    assert not marker.exists()


CUSTOM_CODE = {
    "modeling_tiny.py": "import torch\nfrom torch import nn\n\n\nclass Tiny(nn.Module):\n    pass\n",
    "configuration_tiny.py": "class TinyConfig:\n    model_type = 'tiny'\n",
    "tokenization_tiny.py": "(VOCAB,) = ('a',)\n",
    "precision.txt": "cuda\nfp16\n",  # GLOBAL cuda.fp16, then the end: nothing called
}


def test_python_files_beside_the_weights_are_text_not_pickles(cli: Cli, tmp_path: Path) -> None:
    """Source that starts with `import` or `class` opens with a protocol-0 opcode's byte
    (INST, GLOBAL, MARK): no unpickler gets past names that are not Python names."""
    folder = hf_folder(tmp_path / "model")
    for name, source in CUSTOM_CODE.items():
        (folder / name).write_text(source)
        with pytest.raises((pickle.UnpicklingError, ImportError, EOFError)):
            pickle.loads(source.encode())  # what pickle.load makes of it: an error, nothing run
    result = cli("scan", folder, "--format", "json")
    assert result.exit_code == 0, result.stdout
    for name in CUSTOM_CODE:
        assert (entries(result)[str(folder / name)]["format"], entries(result)[str(folder / name)]["verdict"]) == (
            "text",
            "safe",
        )
    # Data whose ninth byte is `{` (one file in 256) is not a broken safetensors header.
    (folder / "sample.wav").write_bytes(b"\xff" * 8 + b"{\x9c" + bytes(range(256)))
    again = cli("scan", folder, "--format", "json")
    assert again.exit_code == 0, again.stdout
    assert entries(again)[str(folder / "sample.wav")]["format"] == "data"
    alone = cli("scan", folder / "modeling_tiny.py")
    assert (alone.exit_code, alone.stderr.strip()) == (
        2,
        f"ckpttool: error: {folder / 'modeling_tiny.py'}: not a checkpoint: it is text, starting 'import torch'",
    )


def test_a_shared_library_beside_the_weights_is_dangerous(cli: Cli, tmp_path: Path) -> None:
    """Compiled kernels shipped with a model run when whatever uses them loads them: the
    library is a finding, named, on its own in a folder too."""
    folder = hf_folder(tmp_path / "model")
    (folder / "kernels.so").write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 57)
    result = cli("scan", folder, "--format", "json")
    assert result.exit_code == 1, result.stdout
    found = entries(result)[str(folder / "kernels.so")]
    assert (found["verdict"], found["problems"]) == (
        "dangerous",
        ["an ELF executable or shared library: whatever loads it from here runs its code"],
    )
    lone = tmp_path / "lone"
    lone.mkdir()
    (folder / "kernels.so").rename(lone / "kernels.so")
    alone = cli("scan", lone, "--format", "json")
    assert alone.exit_code == 1 and entries(alone)[str(lone / "kernels.so")]["verdict"] == "dangerous"


def test_a_text_looking_pickle_that_calls_before_failing_stays_dangerous(cli: Cli, tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    folder = hf_folder(tmp_path / "model")
    call = f"cposix\nsystem\n(S'touch {marker}'\ntR"
    for name, source in {
        "a.py": call + "import torch\n",
        "b.py": f"(iposix\nsystem\nS'touch {marker}'\nimport x\n",
    }.items():
        (folder / name).write_text(source)
        with contextlib.suppress(Exception):
            pickle.loads(source.encode())
        assert marker.exists() == (name == "a.py"), name  # the first runs its payload before failing
        marker.unlink(missing_ok=True)
    result = cli("scan", folder, "--format", "json")
    assert result.exit_code == 1
    assert {p: f["verdict"] for p, f in entries(result).items() if f["verdict"] != "safe"} == {
        str(folder / "a.py"): "dangerous",
        str(folder / "b.py"): "dangerous",
    }


def test_a_clean_folder_passes_and_a_file_scan_is_unchanged(cli: Cli, tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "model")
    torch.save({"w": torch.ones(2)}, folder / "pytorch_model.bin")
    result = cli("scan", folder, "--format", "json")
    assert result.exit_code == 0, result.stderr
    on_file = cli_json(cli("scan", folder / "pytorch_model.bin", "--format", "json"))["files"]
    assert [entries(result)[str(folder / "pytorch_model.bin")]] == on_file
    assert cli("check", folder).exit_code == 0


@pytest.mark.slow
def test_the_reference_folder_scans_every_pickled_file(cli: Cli, tmp_path: Path) -> None:
    """`reference train`'s folder: every file torch.save wrote is scanned for its pickle."""
    folder = tmp_path / "reference"
    shutil.copytree(REFERENCE, folder)
    saved = {str(p) for p in folder.rglob("*") if zipfile.is_zipfile(p) and _has_data_pkl(p)}
    found = entries(cli("scan", folder, "--format", "json"))
    assert {p for p, f in found.items() if f["pickles"]} == saved and len(saved) >= 6
    marker = tmp_path / "PAYLOAD_RAN"
    plant(folder / "cnn" / "model_optimizer.pt", marker)
    result = cli("scan", folder, "--format", "json")
    assert (result.exit_code, entries(result)[str(folder / "cnn" / "model_optimizer.pt")]["verdict"]) == (
        1,
        "dangerous",
    )
    assert not marker.exists()


def _has_data_pkl(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/data.pkl") for n in archive.namelist())


@pytest.mark.slow
def test_links_to_files_are_followed_and_links_to_folders_out_are_not(cli: Cli, tmp_path: Path) -> None:
    """A loader opening `pytorch_model.bin` reads the file its link names, wherever it lies;
    the files a folder link leads to were never listed, so that link is reported."""
    marker = tmp_path / "PAYLOAD_RAN"
    outside = plant(tmp_path / "elsewhere" / "weights.bin", marker)
    folder = hf_folder(tmp_path / "model")
    os.symlink(outside, folder / "pytorch_model.bin")
    os.symlink(outside.parent, folder / "linked-folder")
    os.symlink(folder / "model.safetensors", folder / "alias.safetensors")  # inside: scanned
    assert payload_fires(folder / "pytorch_model.bin", marker)
    result = cli("scan", folder, "--format", "json")
    assert result.exit_code == 1
    found = entries(result)
    linked = found[str(folder / "pytorch_model.bin")]
    assert linked["verdict"] == "dangerous" and linked["notes"][0].startswith(f"a symbolic link to {outside}:")
    entry = found[str(folder / "linked-folder")]
    assert entry["verdict"] == "unreadable" and "outside the folder: not followed" in entry["error"], entry
    assert found[str(folder / "alias.safetensors")]["verdict"] == "safe"
    assert len(result.stderr.splitlines()) == 1 and "not followed" in result.stderr
    assert cli("check", folder).exit_code == 1
    assert not marker.exists()


def hf_cache_snapshot(cache: Path, files: dict[str, Callable[[Path], object]]) -> Path:
    """The layout huggingface_hub downloads into: `blobs/<sha256>` holds each file's
    content, `snapshots/<commit>/<name>` is a relative link to it, `refs/main` the commit."""
    repo = cache / "models--org--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, write in files.items():
        staged = repo / "blobs" / "staging"
        write(staged)
        blob = repo / "blobs" / hashlib.sha256(staged.read_bytes()).hexdigest()
        staged.rename(blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return snapshot


def _config(path: Path) -> None:
    path.write_text(json.dumps({"model_type": "tiny", "hidden_size": 4}))


def _safetensors(path: Path) -> None:
    save_file({"w": torch.ones(2, 2)}, str(path))


def test_a_hugging_face_cache_snapshot_scans_the_blobs_its_links_name(cli: Cli, tmp_path: Path) -> None:
    snapshot = hf_cache_snapshot(tmp_path / "hub", {"config.json": _config, "model.safetensors": _safetensors})
    assert all(p.is_symlink() for p in snapshot.iterdir())
    result = cli("scan", snapshot, "--format", "json")
    assert result.exit_code == 0, result.stderr
    found = entries(result)
    assert sorted(found) == sorted(str(p) for p in snapshot.iterdir())
    assert found[str(snapshot / "model.safetensors")]["format"] == "safetensors"
    assert found[str(snapshot / "config.json")]["format"] == "text"
    for name, entry in found.items():
        assert entry["verdict"] == "safe" and entry["notes"][0].startswith(f"a symbolic link to {Path(name).resolve()}")
    assert cli("check", snapshot).exit_code == 0


@pytest.mark.slow
def test_a_malicious_blob_in_a_hugging_face_cache_is_dangerous(cli: Cli, tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    files = {"config.json": _config, "model.safetensors": _safetensors, "pytorch_model.bin": lambda p: plant(p, marker)}
    snapshot = hf_cache_snapshot(tmp_path / "hub", files)
    bad = snapshot / "pytorch_model.bin"
    assert payload_fires(bad, marker)
    result = cli("scan", snapshot, "--format", "json")
    assert result.exit_code == 1
    assert {p: f["verdict"] for p, f in entries(result).items() if f["verdict"] != "safe"} == {str(bad): "dangerous"}
    checked = cli("check", snapshot, "--format", "json")
    assert checked.exit_code == 1
    assert any(
        f["message"].startswith("pytorch_model.bin: scan calls this file dangerous")
        for f in cli_json(checked)["files"][0]["findings"]
    )
    assert not marker.exists()


def test_links_that_lead_nowhere_readable_are_reported_not_read(cli: Cli, tmp_path: Path) -> None:
    """A link to a pipe would block the scan, a loop never resolves, a broken link names no file."""
    folder = hf_folder(tmp_path / "model")
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "pipe", folder / "pipe.bin")
    os.symlink(folder / "loop-b.bin", folder / "loop-a.bin")
    os.symlink(folder / "loop-a.bin", folder / "loop-b.bin")
    os.symlink(tmp_path / "gone.bin", folder / "broken.bin")
    result = cli("scan", folder, "--format", "json")
    assert result.exit_code == 1
    found = entries(result)
    assert f"a symbolic link to {tmp_path / 'pipe'}, not a regular file" in found[str(folder / "pipe.bin")]["error"]
    for name in ("loop-a.bin", "loop-b.bin", "broken.bin"):
        assert found[str(folder / name)]["verdict"] == "unreadable"
        assert found[str(folder / name)]["error"].startswith("a broken symbolic link"), found[str(folder / name)]
    assert found[str(folder / "model.safetensors")]["verdict"] == "safe"


def test_a_folder_holding_only_data_without_pickle_is_not_a_checkpoint(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "assets"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(bytes(range(256)) * 4)
    (folder / "vocab.txt").write_text("a\nb\n")
    result = cli("scan", folder)
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert str(folder) in line and "not a checkpoint" in line
    torch.save({"w": torch.ones(1)}, folder / "weights.pt")
    found = entries(cli("scan", folder, "--format", "json"))
    assert found[str(folder / "tokenizer.model")]["format"] == "data"
    assert found[str(folder / "tokenizer.model")]["verdict"] == "safe"


def test_a_sharded_folder_is_one_entry_and_the_files_beside_it_their_own(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    shutil.copytree(SHARDED, folder)
    alone = cli_json(cli("scan", SHARDED, "--format", "json"))["files"]
    result = cli("scan", folder, "--format", "json")
    assert result.exit_code == 0
    assert [{**e, "path": None} for e in cli_json(result)["files"]] == [{**e, "path": None} for e in alone]
    marker = tmp_path / "PAYLOAD_RAN"
    stray = plant(folder / "pytorch_model-00003-of-00002.bin", marker)  # named by no index
    result = cli("scan", folder, "--format", "json")
    assert result.exit_code == 1
    assert {p: f["verdict"] for p, f in entries(result).items()} == {str(folder): "safe", str(stray): "dangerous"}
    assert not marker.exists()


DEEPSPEED = Path(__file__).resolve().parents[2] / "fixtures" / "deepspeed" / "zero2_bf16_3ranks"


@pytest.mark.slow
def test_a_deepspeed_run_is_one_entry_and_each_rank_file_is_decoded_once(cli: Cli, tmp_path: Path) -> None:
    """The run's entry decodes `latest` and the tag's rank files (what DeepSpeed torch.loads);
    an older tag is an entry of its own, and a stray file in a tag folder too."""
    run = tmp_path / "run"
    shutil.copytree(DEEPSPEED, run)
    (run / "zero_to_fp32.py").write_text("print('consolidate')\n")
    tag = run / (run / "latest").read_text().strip()
    shutil.copytree(tag, run / "global_step1")
    ranks = sorted(str(p) for p in tag.iterdir() if zipfile.is_zipfile(p) and _has_data_pkl(p))
    assert len(ranks) == 4  # the model states and 3 optimizer state files
    result = cli("scan", run, "--format", "json")
    assert result.exit_code == 0, result.stderr
    found = entries(result)
    beside = {str(p) for p in run.iterdir() if p.is_file() and p.name != "latest"}
    assert set(found) == {str(run), str(run / "global_step1"), *beside}
    assert (found[str(run)]["format"], found[str(run)]["pickles"]) == ("deepspeed", len(ranks))
    assert found[str(run / "global_step1")]["format"] == "deepspeed"
    assert sum(f["pickles"] for f in found.values()) == 2 * len(ranks)  # no rank file decoded twice
    assert any("zero_to_fp32.py" in note for note in found[str(run)]["notes"])
    assert found[str(run / "zero_to_fp32.py")]["format"] == "text"
    marker = tmp_path / "PAYLOAD_RAN"
    stray = plant(tag / "extra_state.pt", marker)
    assert payload_fires(stray, marker)
    result = cli("scan", run, "--format", "json")
    assert result.exit_code == 1
    assert {p: f["verdict"] for p, f in entries(result).items() if f["verdict"] == "dangerous"} == {
        str(stray): "dangerous"
    }
    alone = cli_json(cli("scan", tag, "--format", "json"))["files"]
    assert {f["path"]: f["format"] for f in alone} == {str(tag): "deepspeed", str(stray): "torch-zip"}
    assert not marker.exists()


MEGATRON = Path(__file__).resolve().parents[2] / "fixtures" / "megatron" / "gpt_tp1"


@pytest.mark.slow
def test_check_of_a_dcp_folder_opens_it_once(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder scan's entry for the checkpoint itself is the opening the read used;
    its findings are those `scan` gives the same folder."""
    probed: list[str] = []
    real = registry.probe

    def counted(path: str, *args: Any) -> Any:
        probed.append(os.path.normpath(path))
        return real(path, *args)

    decoded: list[str] = []

    def decoding(real_decode: Callable[..., Any]) -> Callable[..., Any]:
        def counted_decode(data: bytes, *args: Any, **kwargs: Any) -> Any:
            decoded.append(os.path.basename(str(kwargs.get("source", ""))))
            return real_decode(data, *args, **kwargs)

        return counted_decode

    monkeypatch.setattr(registry, "probe", counted)
    for module in (dcp_format, dcp_metadata):
        monkeypatch.setattr(module, "decode", decoding(module.decode))
    report = check(str(MEGATRON), CheckOptions())
    assert probed.count(os.path.normpath(MEGATRON)) == 1, probed
    assert decoded.count(".metadata") == 1, decoded  # the read's decoding is the scan's
    monkeypatch.undo()
    scanned = cli_json(cli("scan", MEGATRON, "--format", "json"))["files"]
    assert str(MEGATRON) in {f["path"] for f in scanned}
    bad = [f["path"] for f in scanned if f["verdict"] not in ("safe", "needs-allowlist")]
    assert report.ok() == (not bad) and [f.message for f in report.findings if f.severity == "error"] == []


@pytest.mark.slow
def test_a_scan_after_the_read_is_the_scan_of_a_fresh_opening(tmp_path: Path) -> None:
    """The read and the scan share `.metadata`'s decoding: the scan is the same whichever
    ran first, for a clean folder and for one whose metadata holds a payload."""
    marker = tmp_path / "PAYLOAD_RAN"
    hostile = tmp_path / "hostile"
    shutil.copytree(MEGATRON, hostile)
    (hostile / ".metadata").write_bytes(pickle.dumps(ExecPayload(marker)))  # dcp.load pickle.loads it
    load = f"import pickle; pickle.load(open({str(hostile / '.metadata')!r}, 'rb'))"
    subprocess.run([sys.executable, "-c", load], check=True, capture_output=True, timeout=120)
    assert marker.exists()
    marker.unlink()
    for folder in (MEGATRON, hostile):
        opened = open_path(str(folder))
        with contextlib.suppress(CkptError):
            opened.checkpoint()
        assert asdict(scan_opened(opened)) == asdict(scan_file(str(folder)))
    assert scan_file(str(hostile)).verdict == "dangerous" and not marker.exists()
