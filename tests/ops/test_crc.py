"""Damage is never passed on: a storage record whose bytes no longer match its CRC-32.

For every committed fixture kept in torch's zip container (plain, TorchScript, the zip
shards of a sharded .bin), one byte inside the record of a weight is flipped in a copy.
Ground truth: `torch.load` of the copy returns the changed values without a word (torch
does not check data records against their CRC-32), and those changed tensors are the
ones ckpttool must name. Then every command that reads tensor bytes refuses the copy
(exit 2, one line naming the file, the record and the tensors that view it) and writes
nothing; `check` reports it as an integrity finding naming the tensors; the library's
`load_state_dict` raises. A file saved with CRC computation off records no CRC-32 to
check, as torch writes it, and reads as it is.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from groundtruth import data_record_offsets, fixture_path, ground_truth_weights, tensors_equal
from ops.support import (
    BY_NAME,
    CONVERT_REFUSED,
    FIXTURES,
    NO_SAFETENSORS_DTYPE,
    assert_nothing_written,
    assert_one_error_line,
    flip_byte,
    quiet_torch_notices,
    sha256_tree,
)

from ckpttool.checkpoint import Record, TensorRef
from ckpttool.dtypes import DTYPES
from ckpttool.errors import IntegrityError
from ckpttool.formats import read_checkpoint
from ckpttool.materialize import load_state_dict
from ckpttool.weights import find_weights

Cli = Callable[..., Result]
ZIP_FORMATS = {"torch-zip", "torchscript", "sharded-bin"}
DAMAGEABLE = [r for r in FIXTURES if r["format"] in ZIP_FORMATS and r["name"] != "no_crc32"]


@dataclass
class Damaged:
    """A copy of a fixture with one byte of a weight's record flipped."""

    record: dict[str, Any]
    folder: Path  # holds the copy at the fixture's own relative path
    path: Path  # the file or folder to pass to ckpttool
    file: Path  # the file that holds the damaged record
    record_name: str  # e.g. `cnn_state_dict/data/2`
    changed_keys: list[str]  # full dotted keys of the tensors torch.load now reads differently
    original: dict[str, str]  # sha256 of the copy's files after damage


def first_checkable_weight(path: Path, root: str | None, with_crc: bool = True) -> tuple[str, TensorRef, Record]:
    """The first weight whose record carries a CRC-32 and whose values `inspect --stats` reads."""
    weights = find_weights(read_checkpoint(str(path)).root, root)
    for named in weights.tensors:
        ref = named.tensor
        if not isinstance(ref, TensorRef) or ref.layout != "strided" or not ref.numel:
            continue
        record = ref.storage.record if ref.storage else None
        if (
            record is not None
            and (record.crc or not with_crc)
            and DTYPES[ref.dtype].kind in ("float", "int", "bool", "complex")
        ):
            return named.key, ref, record
    raise AssertionError(f"{path}: no weight with a checked record")


def damage(record: dict[str, Any], folder: Path) -> Damaged:
    source = fixture_path(record)
    copy = folder / str(record["file"])
    copy.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, copy)
    else:
        shutil.copyfile(source, copy)
    root = record.get("weights_root") or None
    _, ref, zip_record = first_checkable_weight(copy, root)
    first, end = ref.byte_span()
    flip_byte(Path(zip_record.path), zip_record.data_offset() + (first + end) // 2)
    with quiet_torch_notices():
        before, after = ground_truth_weights(record), ground_truth_weights(record, folder)
    prefix = f"{root}." if root and record["format"] != "torchscript" else ""
    changed = [prefix + key for key in before if not tensors_equal(before[key], after[key])]
    assert changed, "torch.load should return the changed bytes: it does not check CRC-32s"
    return Damaged(record, folder, copy, Path(zip_record.path), zip_record.name, changed, sha256_tree(folder))


@pytest.fixture(params=DAMAGEABLE, ids=[r["name"] for r in DAMAGEABLE])
def damaged(request: pytest.FixtureRequest, tmp_path: Path) -> Damaged:
    return damage(request.param, tmp_path / "src")


def only_damaged(keep: Callable[[dict[str, Any]], bool]) -> pytest.MarkDecorator:
    """Give the `damaged` fixture only the records `keep` accepts."""
    records = [record for record in DAMAGEABLE if keep(record)]
    return pytest.mark.parametrize("damaged", records, indirect=True, ids=[record["name"] for record in records])


def assert_refused(result: Result, damaged: Damaged) -> None:
    line = assert_one_error_line(result, str(damaged.file), f"record {damaged.record_name} ", "CRC-32")
    match = re.search(r" it holds tensors? (.*)$", line)
    assert match is not None, line
    if " more" not in match.group(1):  # at most five names are listed
        named = match.group(1).split(", ")
        assert set(damaged.changed_keys) <= set(named), line


# Files convert refuses for another reason (tests/ops/test_convert.py) are left out.
@only_damaged(lambda r: r["name"] not in CONVERT_REFUSED | NO_SAFETENSORS_DTYPE)
def test_convert_to_safetensors_refuses(damaged: Damaged, cli: Cli, tmp_path: Path) -> None:
    dst = tmp_path / "out.safetensors"
    assert_refused(cli("convert", damaged.path, dst), damaged)
    assert_nothing_written(tmp_path, dst)
    assert sha256_tree(damaged.folder) == damaged.original


@only_damaged(lambda r: r["name"] not in CONVERT_REFUSED)
@pytest.mark.parametrize("shard_size", [None, "1"], ids=["one-file", "sharded"])
def test_convert_to_pth_refuses(damaged: Damaged, shard_size: str | None, cli: Cli, tmp_path: Path) -> None:
    dst = tmp_path / "out.pt"
    args = ["--shard-size", shard_size] if shard_size else []
    assert_refused(cli("convert", damaged.path, dst, "--to", "pth", *args), damaged)
    assert_nothing_written(tmp_path, dst)
    assert sha256_tree(damaged.folder) == damaged.original


# remap rewrites single torch checkpoints.
@only_damaged(lambda r: r["format"] == "torch-zip")
def test_remap_refuses(damaged: Damaged, cli: Cli, tmp_path: Path) -> None:
    dst = tmp_path / "out.pt"
    assert_refused(cli("remap", damaged.path, dst, "--device", "cpu"), damaged)
    assert_nothing_written(tmp_path, dst)
    assert sha256_tree(damaged.folder) == damaged.original


def test_diff_against_the_original_refuses(damaged: Damaged, cli: Cli) -> None:
    assert_refused(cli("diff", damaged.path, fixture_path(damaged.record)), damaged)
    assert_refused(cli("diff", fixture_path(damaged.record), damaged.path), damaged)


def test_inspect_stats_refuses(damaged: Damaged, cli: Cli) -> None:
    assert_refused(cli("inspect", damaged.path, "--stats"), damaged)


# load_state_dict reads the dense weights of torch checkpoints.
@only_damaged(lambda r: r["format"] != "torchscript" and r["name"] not in CONVERT_REFUSED)
def test_load_state_dict_refuses(damaged: Damaged) -> None:
    with pytest.raises(IntegrityError, match=f"record {damaged.record_name} fails its CRC-32"):
        load_state_dict(str(damaged.path), damaged.record.get("weights_root") or None)


def test_check_names_the_record_and_its_tensors(damaged: Damaged, cli: Cli) -> None:
    result = cli("check", damaged.path, "--format", "json")
    assert result.exit_code == 1, result.output
    findings = [
        f for f in all_findings(cli_json_document(result)) if f["check"] == "integrity" and "CRC" in f["message"]
    ]
    assert len(findings) == 1, findings
    (finding,) = findings
    assert finding["severity"] == "error"
    assert damaged.record_name in finding["message"]
    assert finding["key"] in finding["message"]
    if " more" not in finding["message"]:
        assert all(key in finding["message"] for key in damaged.changed_keys)


def cli_json_document(result: Result) -> Any:
    return json.loads(result.stdout)


def all_findings(document: Any) -> list[dict[str, Any]]:
    """Findings of a check report, whether one file's or several files'."""
    if isinstance(document, dict):
        found = list(document.get("findings", []))
        for value in document.values():
            if isinstance(value, list):
                found += [f for item in value if isinstance(item, dict) for f in all_findings(item)]
        return found
    return []


def test_a_file_without_crcs_reads_as_it_is(cli: Cli, tmp_path: Path) -> None:
    # Saved with torch.serialization.set_crc32_options(False): every CRC field is 0 and
    # there is nothing to check, for torch as for ckpttool.
    record = BY_NAME["no_crc32"]
    copy = tmp_path / "src" / str(record["file"])
    copy.parent.mkdir()
    shutil.copyfile(fixture_path(record), copy)
    _, ref, zip_record = first_checkable_weight(copy, None, with_crc=False)
    flip_byte(copy, zip_record.data_offset())
    torch_reads = ground_truth_weights(record, tmp_path / "src")
    dst = tmp_path / "out.safetensors"
    assert cli("convert", copy, dst).exit_code == 0
    from safetensors.torch import load_file

    written = load_file(dst)
    assert all(tensors_equal(written[key], value) for key, value in torch_reads.items())


def test_undamaged_fixtures_are_not_refused(cli: Cli) -> None:
    # No false alarms: every record of every committed zip fixture holds its CRC-32.
    for record in DAMAGEABLE:
        result = cli("inspect", fixture_path(record), "--stats", "--format", "json")
        assert result.exit_code == 0, (record["name"], result.stderr)


def test_a_tensor_viewing_part_of_a_damaged_record_is_refused(cli: Cli, tmp_path: Path) -> None:
    # The CRC-32 covers the whole record: damage outside the slice a tensor views is still
    # damage, though torch.load returns the slice unchanged.
    import torch

    base = torch.arange(100, dtype=torch.float32)
    src = tmp_path / "slice.pt"
    torch.save({"part": base[10:20]}, src)
    (name, offset), *_ = data_record_offsets(src)
    flip_byte(src, offset + 50 * 4)
    assert tensors_equal(torch.load(src, weights_only=True)["part"], base[10:20])  # noqa: TID251 - ground truth
    for args in (["convert", src, tmp_path / "out.safetensors"], ["inspect", src, "--stats"]):
        line = assert_one_error_line(cli(*args), f"record {name} fails its CRC-32", "it holds tensor part")
        assert str(src) in line
    assert_nothing_written(tmp_path, tmp_path / "out.safetensors")
