"""`ckpttool convert SRC DST`: output format by name, options, JSON and table reports, errors.

Outputs are read back by the reference readers and compared with the ground truth;
exit code, stdout and stderr are checked apart. The library's behaviour in depth is
in tests/ops/test_convert.py and tests/ops/test_failures.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from conftest import cli_json
from groundtruth import fixture_path, ground_truth_weights, tensors_equal, torch_load_trusted
from ops.support import (
    ALIASES_KEY,
    BY_NAME,
    assert_nothing_written,
    assert_one_error_line,
    assert_same_tensors,
    committed_fixtures_unchanged,
    dangerous_checkpoint,
    load_output,
    load_sharded_output,
    read_index,
    safetensors_metadata,
    temp_files,
    unchanged,
)

import ckpttool.ops.convert.converting as convert_module

Cli = Callable[..., Result]
REPORT_FIELDS = {
    "schema_version", "source", "outputs", "format", "weights_root", "tensors", "bytes",
    "cast", "aliases", "verified", "notes",
}  # fmt: skip

__all__ = ["committed_fixtures_unchanged"]  # autouse: the committed fixtures stay as they were


def fixture(name: str) -> Path:
    return fixture_path(BY_NAME[name])


def convert_json(cli: Cli, src: Path, dst: Path, *options: Any) -> dict[str, Any]:
    """`ckpttool convert --format json`, which must succeed and leave SRC as it was."""
    with unchanged(src):
        result = cli("convert", src, dst, "--format", "json", *options)
    assert result.exit_code == 0, result.stderr
    report: dict[str, Any] = cli_json(result)
    return report


# -- the output format follows DST's name unless --to says otherwise ------------------------------

SOURCES = [
    "cnn_whole_model_main",  # __main__.CNN, a class that does not exist here
    "nn_whole_model_package",  # models.net.NN, a package that does not exist here
    "general_checkpoint_tensor_loss",
    "lightning_checkpoint",
    "legacy_whole_model",
    "legacy_tar_layouts",
    "cuda0_model_optimizer",
    "sharded_safetensors",
    "sharded_bin",
    "torchscript_traced",
    "safetensors_dtypes",
]


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize(
    ("dst_name", "to"),
    [("model.safetensors", "safetensors"), ("model.pt", "pth"), ("pytorch_model.bin", "pth")],
)
def test_output_format_follows_the_destination_name(
    cli: Cli, name: str, dst_name: str, to: str, tmp_path: Path
) -> None:
    record = BY_NAME[name]
    dst = tmp_path / dst_name
    report = convert_json(cli, fixture(name), dst)
    assert report["format"] == to
    assert report["outputs"] == [str(dst)]
    assert_same_tensors(load_output(dst, to), ground_truth_weights(record))


@pytest.mark.parametrize("dst_name", ["weights.pt", "model.ckpt"])
def test_to_overrides_the_name(cli: Cli, dst_name: str, tmp_path: Path) -> None:
    # (The other way round, a pth named .safetensors, torch.load itself would hand to
    # safetensors by its extension.)
    dst = tmp_path / dst_name
    report = convert_json(cli, fixture("cnn_state_dict"), dst, "--to", "safetensors")
    assert report["format"] == "safetensors"
    expected = ground_truth_weights(BY_NAME["cnn_state_dict"])
    assert_same_tensors(load_output(dst, "safetensors"), expected)


def test_json_report(cli: Cli, tmp_path: Path) -> None:
    record = BY_NAME["imagenet_style_checkpoint"]
    dst = tmp_path / "model.safetensors"
    report = convert_json(cli, fixture_path(record), dst)
    expected = ground_truth_weights(record)
    assert set(report) == REPORT_FIELDS
    assert report["schema_version"] == 1
    assert report["source"] == str(fixture_path(record))
    assert report["weights_root"] == "state_dict"
    assert report["tensors"] == len(expected)
    assert report["bytes"] == sum(t.nbytes for t in expected.values())
    assert (report["cast"], report["aliases"], report["verified"]) == (0, {}, True)


def test_table_report(cli: Cli, tmp_path: Path) -> None:
    dst = tmp_path / "model.safetensors"
    result = cli("convert", fixture("model_optimizer_checkpoint"), dst)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert lines["wrote"].strip() == str(dst)
    assert lines["weights"].strip() == "'model'"
    assert lines["format"].strip() == "safetensors"
    assert "verified" in lines


# -- options --------------------------------------------------------------------------------------


def test_root(cli: Cli, tmp_path: Path) -> None:
    dst = tmp_path / "ema.safetensors"
    report = convert_json(cli, fixture("timm_checkpoint_with_ema"), dst, "--root", "state_dict_ema")
    assert report["weights_root"] == "state_dict_ema"
    loaded = torch_load_trusted(fixture("timm_checkpoint_with_ema"))
    assert_same_tensors(load_output(dst, "safetensors"), loaded["state_dict_ema"])


@pytest.mark.parametrize("to", ["safetensors", "pth"])
def test_dtype(cli: Cli, to: str, tmp_path: Path) -> None:
    record = BY_NAME["batchnorm_state_dict"]
    dst = tmp_path / f"half.{'safetensors' if to == 'safetensors' else 'pt'}"
    report = convert_json(cli, fixture_path(record), dst, "--dtype", "bfloat16")
    source = ground_truth_weights(record)
    expected = {k: t.to(torch.bfloat16) if t.is_floating_point() else t for k, t in source.items()}
    assert_same_tensors(load_output(dst, to), expected)
    assert report["cast"] == sum(t.is_floating_point() for t in source.values())


def test_strip_prefix_and_rename(cli: Cli, tmp_path: Path) -> None:
    dst = tmp_path / "model.safetensors"
    convert_json(
        cli,
        fixture("lightning_checkpoint"),
        dst,
        "--strip-prefix", "model.",
        "--rename", r"^fc(\d)\.=head\1.",
    )  # fmt: skip
    source = ground_truth_weights(BY_NAME["lightning_checkpoint"])
    expected = {
        key.removeprefix("model.").replace("fc1.", "head1.", 1).replace("fc2.", "head2.", 1): t
        for key, t in source.items()
    }
    assert any(key.startswith("head") for key in expected)
    assert_same_tensors(load_output(dst, "safetensors"), expected)


def test_metadata(cli: Cli, tmp_path: Path) -> None:
    dst = tmp_path / "model.safetensors"
    convert_json(cli, fixture("cnn_state_dict"), dst, "--metadata", "author=me", "--metadata", "note=a=b")
    metadata = safetensors_metadata(dst)
    assert metadata["author"] == "me"
    assert metadata["note"] == "a=b"  # split at the first '=' only


@pytest.mark.parametrize("option", ["--metadata", "--rename"])
def test_pairs_without_equals_are_usage_errors(cli: Cli, option: str, tmp_path: Path) -> None:
    dst = tmp_path / "model.safetensors"
    result = cli("convert", fixture("cnn_state_dict"), dst, option, "novalue")
    assert result.exit_code == 2
    assert option in result.stderr and "Traceback" not in result.stderr
    assert_nothing_written(tmp_path, dst)


def test_dedupe(cli: Cli, tmp_path: Path) -> None:
    record = BY_NAME["tied_weights_state_dict"]
    dst = tmp_path / "model.safetensors"
    report = convert_json(cli, fixture_path(record), dst, "--dedupe")
    assert report["aliases"] == {"head.weight": "embed.weight"}
    assert json.loads(safetensors_metadata(dst)[ALIASES_KEY]) == report["aliases"]
    stored = load_output(dst, "safetensors")
    assert "head.weight" not in stored
    assert tensors_equal(stored["embed.weight"], ground_truth_weights(record)["head.weight"])


def test_dedupe_pth_shares_storage(cli: Cli, tmp_path: Path) -> None:
    dst = tmp_path / "model.pt"
    convert_json(cli, fixture("tied_weights_whole_model"), dst, "--dedupe")
    stored = load_output(dst, "pth")
    assert stored["head.weight"].untyped_storage().data_ptr() == stored["embed.weight"].untyped_storage().data_ptr()


@pytest.mark.parametrize("to", ["safetensors", "pth"])
def test_shard_size(cli: Cli, to: str, tmp_path: Path) -> None:
    record = BY_NAME["neural_network_state_dict"]
    dst = tmp_path / ("model.safetensors" if to == "safetensors" else "pytorch_model.bin")
    report = convert_json(cli, fixture_path(record), dst, "--shard-size", "10KB")
    shards = sorted(set(read_index(dst)["weight_map"].values()))
    assert report["outputs"] == [str(tmp_path / s) for s in shards] + [f"{dst}.index.json"]
    assert not dst.exists()
    assert_same_tensors(load_sharded_output(dst, to), ground_truth_weights(record))


@pytest.mark.parametrize("size", ["lots", "0", "-5MB"])
def test_bad_shard_size_is_one_error_line(cli: Cli, size: str, tmp_path: Path) -> None:
    dst = tmp_path / "model.safetensors"
    result = cli("convert", fixture("cnn_state_dict"), dst, "--shard-size", size)
    assert_one_error_line(result, size)
    assert_nothing_written(tmp_path, dst)


def test_bad_choice_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    dst = tmp_path / "model.safetensors"
    result = cli("convert", fixture("cnn_state_dict"), dst, "--dtype", "float8")
    assert result.exit_code == 2
    assert_nothing_written(tmp_path, dst)


# -- destinations and errors ----------------------------------------------------------------------


def test_existing_destination_needs_force(cli: Cli, tmp_path: Path) -> None:
    dst = tmp_path / "model.safetensors"
    dst.write_bytes(b"keep me")
    result = cli("convert", fixture("cnn_state_dict"), dst)
    assert_one_error_line(result, str(dst), "--force")
    assert dst.read_bytes() == b"keep me"
    assert temp_files(tmp_path) == []

    convert_json(cli, fixture("cnn_state_dict"), dst, "--force")
    assert_same_tensors(load_output(dst, "safetensors"), ground_truth_weights(BY_NAME["cnn_state_dict"]))


def test_missing_source_is_one_error_line(cli: Cli, tmp_path: Path) -> None:
    src, dst = tmp_path / "missing.pt", tmp_path / "model.safetensors"
    assert_one_error_line(cli("convert", src, dst), str(src))
    assert_nothing_written(tmp_path, dst)


@pytest.mark.parametrize(
    ("name", "dst_name", "fragment"),
    [
        ("exotic_tensors", "model.pt", "sparse"),
        ("dtypes", "model.safetensors", "complex128"),
        ("raw_pickle_bin", "model.safetensors", "raw_pickle.bin"),
    ],
)
def test_unconvertible_source_is_one_error_line(
    cli: Cli, name: str, dst_name: str, fragment: str, tmp_path: Path
) -> None:
    dst = tmp_path / dst_name
    assert_one_error_line(cli("convert", fixture(name), dst), fragment)
    assert_nothing_written(tmp_path, dst)


def test_verification_mismatch_exits_1(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # DESIGN.md: exit 1 is "the command ran and found something ... a verify mismatch".
    monkeypatch.setattr(convert_module, "copy_matches_record", lambda source, copy: False)  # compare, not CRC
    monkeypatch.setattr(convert_module, "same_bytes", lambda a, b: False)
    dst = tmp_path / "model.safetensors"
    result = cli("convert", fixture("cnn_state_dict"), dst)
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("ckpttool: ")
    assert_nothing_written(tmp_path, dst)


def test_verification_mismatch_leaves_nothing(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_module, "copy_matches_record", lambda source, copy: False)  # compare, not CRC
    monkeypatch.setattr(convert_module, "same_bytes", lambda a, b: False)
    dst = tmp_path / "model.safetensors"
    result = cli("convert", fixture("cnn_state_dict"), dst)
    assert result.exit_code != 0 and result.stdout == ""
    assert "does not read back equal" in result.stderr
    assert_nothing_written(tmp_path, dst)


# -- --trust --------------------------------------------------------------------------------------


def test_trust_refuses_a_dangerous_file(cli: Cli, tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    src, _ = dangerous_checkpoint(tmp_path, marker)
    dst = tmp_path / "model.safetensors"
    with unchanged(src):
        result = cli("convert", "--trust", src, dst)
    assert_one_error_line(result, str(src), "dangerous", "--force")
    assert not marker.exists()
    assert_nothing_written(tmp_path, dst)


def test_trust_with_force_loads_a_dangerous_file(cli: Cli, tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    src, weights = dangerous_checkpoint(tmp_path, marker)
    dst = tmp_path / "model.safetensors"
    report = convert_json(cli, src, dst, "--trust", "--force")
    assert marker.exists()  # the user asked for torch.load(weights_only=False) by name
    assert report["weights_root"] == "state_dict"
    assert_same_tensors(load_output(dst, "safetensors"), weights)


def test_trust_converts_a_safe_file(cli: Cli, tmp_path: Path) -> None:
    record = BY_NAME["general_checkpoint_float_loss"]
    dst = tmp_path / "model.safetensors"
    report = convert_json(cli, fixture_path(record), dst, "--trust")
    assert report["weights_root"] == "model_state_dict"
    assert_same_tensors(load_output(dst, "safetensors"), ground_truth_weights(record))


def test_trust_when_torch_cannot_load_is_one_error_line(cli: Cli, tmp_path: Path) -> None:
    # The class's package is absent, so torch.load fails: an input that cannot be read
    # this way. One `ckpttool: error:` line naming the file; no fallback, nothing written.
    src, dst = fixture("nn_whole_model_package"), tmp_path / "model.safetensors"
    result = cli("convert", "--trust", src, dst)
    assert_one_error_line(result, str(src))
    assert_nothing_written(tmp_path, dst)


@pytest.mark.parametrize("name", ["cnn_whole_model_main", "dtypes", "tied_weights_whole_model"])
def test_pth_output_is_a_plain_state_dict_scan_calls_safe(cli: Cli, name: str, tmp_path: Path) -> None:
    # A whole pickled model goes in; what comes out names no class but torch's own.
    dst = tmp_path / "model.pt"
    convert_json(cli, fixture(name), dst, "--dedupe")
    result = cli("scan", "--format", "json", dst)
    assert result.exit_code == 0, result.stdout
    (report,) = cli_json(result)["files"]
    assert report["verdict"] == "safe"
    assert all(g["module"] in ("torch", "torch._utils", "torch.storage", "collections") for g in report["globals"])
