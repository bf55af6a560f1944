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
from support.cli import assert_one_error_line, cli_json
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


# -- variants and several layouts in one folder ---------------------------------------------
# Names as transformers 4.46 and 5.25 and diffusers 0.39 and 0.42 write them with
# save_pretrained(variant="fp16"), with and without max_shard_size: the variant goes before
# the extension of a file (`model.fp16.safetensors`) and of an index
# (`model.safetensors.index.fp16.json`), whose shards are `model.fp16-00001-of-00002.safetensors`.


def _write_sharded(folder: Path, index_name: str, shard_stem: str, state: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ext = "safetensors" if ".safetensors." in index_name else "bin"
    halves = [dict(list(state.items())[:1]), dict(list(state.items())[1:])]
    weight_map = {}
    for n, half in enumerate(halves, 1):
        shard = f"{shard_stem}-{n:05d}-of-{len(halves):05d}.{ext}"
        if ext == "safetensors":
            save_file(half, str(folder / shard))
        else:
            torch.save(half, folder / shard)
        weight_map.update(dict.fromkeys(half, shard))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / index_name).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def _shown(cli: Cli, folder: Path) -> tuple[str, dict[str, tuple[str, list[int]]]]:
    inspected = cli("inspect", folder, "--format", "json")
    assert inspected.exit_code == 0, inspected.output
    report = cli_json(inspected)
    return report["path"], {t["key"]: (t["dtype"], t["shape"]) for t in report["weights"]["tensors"]}


def _described(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, list[int]]]:
    return {k: (str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in state.items()}


HALF = {k: v.half() for k, v in STATE.items()}


@pytest.mark.parametrize(
    "name",
    ["model.fp16.safetensors", "pytorch_model.fp16.bin", "diffusion_pytorch_model.fp16.safetensors",
     "diffusion_pytorch_model.non_ema.bin"],
)  # fmt: skip
def test_a_variant_alone_is_the_folders_weights(cli: Cli, tmp_path: Path, name: str) -> None:
    path = _save(tmp_path / "saved", name, "config.json")
    where, shown = _shown(cli, path.parent)
    assert (where, shown) == (str(path), _described(_truth(path)))
    assert cli("check", path.parent).exit_code == 0


@pytest.mark.parametrize(
    ("index", "stem"),
    [("model.safetensors.index.fp16.json", "model.fp16"), ("pytorch_model.bin.index.fp16.json", "pytorch_model.fp16"),
     ("diffusion_pytorch_model.safetensors.index.fp16.json", "diffusion_pytorch_model.fp16")],
)  # fmt: skip
def test_a_sharded_variant_is_read_through_its_index(cli: Cli, tmp_path: Path, index: str, stem: str) -> None:
    _write_sharded(tmp_path / "saved", index, stem, HALF)
    where, shown = _shown(cli, tmp_path / "saved")
    assert (where, shown) == (str(tmp_path / "saved" / index), _described(HALF))
    converted = cli("convert", tmp_path / "saved", tmp_path / "one.safetensors")
    assert converted.exit_code == 0, converted.output
    assert {k: v.tolist() for k, v in load_file(str(tmp_path / "one.safetensors")).items()} == {
        k: v.tolist() for k, v in HALF.items()
    }


def test_a_hub_folder_with_safetensors_and_bin_shards_reads_the_safetensors(cli: Cli, tmp_path: Path) -> None:
    """What a Hub repository converted to safetensors holds: both indexes, as transformers
    loads it (the safetensors one); the folder scan still scans every .bin shard."""
    folder = tmp_path / "repo"
    _write_sharded(folder, "pytorch_model.bin.index.json", "pytorch_model", STATE)
    _write_sharded(folder, "model.safetensors.index.json", "model", HALF)
    where, shown = _shown(cli, folder)
    assert (where, shown) == (str(folder / "model.safetensors.index.json"), _described(HALF))
    scanned = cli_json(cli("scan", folder, "--format", "json"))["files"]
    bins = {Path(f["path"]).name: f["verdict"] for f in scanned if f["path"].endswith(".bin")}
    assert bins == {"pytorch_model-00001-of-00002.bin": "safe", "pytorch_model-00002-of-00002.bin": "safe"}


@pytest.mark.parametrize(
    ("files", "read"),
    [
        pytest.param(["diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"],
                     "diffusion_pytorch_model.safetensors", id="no variant before a variant"),
        pytest.param(["model.safetensors", "pytorch_model.bin.index.json"], "model.safetensors",
                     id="a safetensors file before a .bin index"),
    ],
)  # fmt: skip
def test_the_file_from_pretrained_loads_first(cli: Cli, tmp_path: Path, files: list[str], read: str) -> None:
    folder = tmp_path / "saved"
    for name in files:
        if name.endswith(".index.json"):
            _write_sharded(folder, name, name.split(".")[0], STATE)
        elif not folder.exists():
            _save(folder, name, "config.json")  # STATE, with a config
        else:
            save_file(HALF, str(folder / name))
    where, shown = _shown(cli, folder)
    assert (where, shown) == (str(folder / read), _described(_truth(folder / read)))


def test_several_variants_and_none_plain_is_for_the_user_to_choose(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    _save(folder, "model.fp16.safetensors", "config.json")
    save_file(STATE, str(folder / "model.bf16.safetensors"))
    result = cli("inspect", folder)
    assert_one_error_line(result, "several variants (bf16, fp16)", "name the file", path=folder)
    assert cli("inspect", folder / "model.bf16.safetensors").exit_code == 0


def test_a_scanned_folders_file_names_keep_their_start_at_80_columns(tmp_path: Path) -> None:
    """A sentence-transformers folder (sentence-transformers 6.3 `save`: modules.json,
    config_sentence_transformers.json, 1_Pooling/config.json, 2_Dense/model.safetensors ...):
    a file name too long for the summary is cut inside the name, keeping its start and its
    extension, not down to `…json` as if its dots parted a dotted key."""
    from click.testing import CliRunner

    from ckpttool.cli import main

    folder = tmp_path / "all-MiniLM-like"
    _save(folder, "model.safetensors", "config.json")
    names = ["modules.json", "config_sentence_transformers.json", "sentence_bert_config.json"]
    for name in [*names, "1_Pooling/config.json", "2_Dense/config.json"]:
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text("{}")
    save_file({"linear.weight": torch.ones(2, 4)}, str(folder / "2_Dense" / "model.safetensors"))
    result = CliRunner().invoke(main, ["scan", str(folder)], env={"COLUMNS": "80"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = result.stdout[result.stdout.index("files under") :].splitlines()[3:-1]
    shown = [line.split()[0] for line in summary]
    assert max(map(len, result.stdout.splitlines())) <= 80
    (cut,) = [s for s in shown if "…" in s]
    head, tail = cut.split("…")
    assert "config_sentence_transformers.json".startswith(head) and len(head) >= 8
    assert "config_sentence_transformers.json".endswith(tail) and tail.endswith(".json") and len(tail) > 5


def test_save_pretrained_folders_of_the_real_library(cli: Cli, tmp_path: Path) -> None:
    """transformers' own save_pretrained, where it is installed (not in CI's venv: the tests
    above rebuild its names with torch), plain, as a variant and sharded: each folder reads
    as the tensors transformers wrote."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    for options in ({}, {"variant": "fp16"}, {"variant": "fp16", "max_shard_size": "8KB"}):
        folder = tmp_path / "_".join(f"{k}{v}" for k, v in options.items())
        model.save_pretrained(folder, **options)
        files = sorted(folder.glob("*.safetensors"))
        truth = {k: v for f in files for k, v in load_file(str(f)).items()}
        where, shown = _shown(cli, folder)
        assert shown == _described(truth), options
        assert Path(where).name.startswith("model"), where
