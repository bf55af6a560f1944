"""`ckpttool check PATH...` on the command line: exit 0 when every check holds, 1 on any
error-level finding (any warning too with --strict), 2 for an unreadable file or a
misused option; the table, JSON (one file or several) and CSV forms of one report;
integrity, safety, --finite and --cpu-only findings with their severities.

Agreement of `--model` with `load_state_dict` is tested in tests/compare/test_check_truth.py.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from conftest import cli_json
from groundtruth import COMMITTED_DIR, FIXTURES_DIR, data_record_offsets, tutorial_models

Cli = Callable[..., Result]
ERROR_PREFIX = "ckpttool: error: "
CLEAN = COMMITTED_DIR / "cnn_state_dict.pth"
SAFETENSORS = COMMITTED_DIR / "cnn.safetensors"
DATAPARALLEL = COMMITTED_DIR / "dataparallel_state_dict.pth"
WHOLE_MODEL = COMMITTED_DIR / "cnn_whole_model.pth"
CUDA = COMMITTED_DIR / "cnn_state_dict_cuda0.pth"
CNN_SPEC = f"{FIXTURES_DIR / 'tutorial_models.py'}:CNN"
FILE_FIELDS = {"schema_version", "path", "ok", "findings", "missing", "unexpected", "shape_mismatch",
               "dtype_mismatch", "suggestions"}  # fmt: skip
FINDING_FIELDS = {"check", "severity", "key", "message"}
SUGGESTION_FIELDS = {"fix", "option", "fixes", "missing_after", "unexpected_after"}
CSV_HEADER = ["path", "check", "severity", "key", "message"]
CNN_KEYS = list(tutorial_models().CNN().state_dict())


def blocks(stdout: str) -> list[list[str]]:
    return [block.splitlines() for block in stdout.strip().split("\n\n")]


def key_values(block: list[str]) -> dict[str, str]:
    return {name.strip(): value.strip() for name, value in (line.split(":", 1) for line in block)}


def table(block: list[str]) -> list[dict[str, str]]:
    """A tabulate `simple` table as dicts, cut at the columns its dashed rule marks."""
    header, rule, *rows = block
    spans, start = [], 0
    for dashes in rule.split("  "):
        if dashes:
            begin = rule.index(dashes, start)
            spans.append(begin)
            start = begin + len(dashes)
    bounds = [*spans, None]
    columns = [header[bounds[i] : bounds[i + 1]].strip() for i in range(len(spans))]
    return [{c: row[bounds[i] : bounds[i + 1]].strip() for i, c in enumerate(columns)} for row in rows]


def assert_one_error_line(result: Result, *names: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


def check_json(cli: Cli, *args: Any) -> tuple[int, dict[str, Any]]:
    result = cli("check", *args, "--format", "json")
    assert result.exit_code in (0, 1), (result.exit_code, result.stderr)
    assert result.stderr == ""
    return result.exit_code, cli_json(result)


def corrupted_copy(source: Path, folder: Path) -> Path:
    """The file with one byte of its first storage record flipped: the record's CRC-32 fails."""
    target = folder / source.name
    shutil.copyfile(source, target)
    _, offset = next(iter(data_record_offsets(target)))
    data = bytearray(target.read_bytes())
    data[offset] ^= 0x01
    target.write_bytes(bytes(data))
    return target


class SystemCall:
    """Pickles as a call to os.system: what a hostile checkpoint hides next to its weights."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


# -- passing files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [CLEAN, SAFETENSORS, COMMITTED_DIR / "sharded_safetensors"], ids=["pth", "safetensors", "sharded"]
)
def test_clean_file_passes(cli: Cli, path: Path) -> None:
    result = cli("check", path)
    assert (result.exit_code, result.stderr) == (0, "")
    (head,) = blocks(result.stdout)
    assert key_values(head) == {"file": str(path), "result": "OK", "findings": "0"}


def test_json_for_one_file(cli: Cli) -> None:
    code, report = check_json(cli, CLEAN, "--model", CNN_SPEC)
    assert code == 0
    assert set(report) == FILE_FIELDS
    assert (report["schema_version"], report["path"], report["ok"]) == (1, str(CLEAN), True)
    assert report["findings"] == report["missing"] == report["unexpected"] == report["suggestions"] == []


def test_json_for_several_files(cli: Cli) -> None:
    code, document = check_json(cli, CLEAN, DATAPARALLEL, "--model", CNN_SPEC)
    assert code == 1
    assert set(document) == {"schema_version", "ok", "files"}
    assert document["ok"] is False
    assert [(f["path"], f["ok"]) for f in document["files"]] == [(str(CLEAN), True), (str(DATAPARALLEL), False)]
    assert all(set(f) == FILE_FIELDS - {"schema_version"} for f in document["files"])
    code, document = check_json(cli, CLEAN, SAFETENSORS)
    assert (code, document["ok"]) == (0, True)


# -- failing files: findings, suggestions, forms ---------------------------------------------------


def test_table_with_findings_and_suggestion(cli: Cli) -> None:
    result = cli("check", DATAPARALLEL, "--model", CNN_SPEC)
    assert (result.exit_code, result.stderr) == (1, "")
    head, findings, *suggestions = blocks(result.stdout)
    assert key_values(head) == {"file": str(DATAPARALLEL), "result": "FAILED", "findings": str(2 * len(CNN_KEYS))}
    rows = table(findings)
    assert {(r["severity"], r["check"]) for r in rows} == {("error", "model")}
    assert {r["key"] for r in rows} == set(CNN_KEYS) | {f"module.{k}" for k in CNN_KEYS}
    assert suggestions[0] == [
        f"suggestion: strip prefix 'module.' (--strip-prefix module.) fixes {len(CNN_KEYS)} keys; "
        "0 missing and 0 unexpected remain"
    ]


def test_json_suggestion_fields(cli: Cli) -> None:
    code, report = check_json(cli, DATAPARALLEL, "--model", CNN_SPEC)
    assert code == 1
    assert all(set(f) == FINDING_FIELDS for f in report["findings"])
    best = report["suggestions"][0]
    assert set(best) == SUGGESTION_FIELDS
    assert best == {"fix": "strip prefix 'module.'", "option": "--strip-prefix module.", "fixes": len(CNN_KEYS),
                    "missing_after": 0, "unexpected_after": 0}  # fmt: skip
    assert report["missing"] == CNN_KEYS
    assert report["unexpected"] == [f"module.{k}" for k in CNN_KEYS]


def test_csv_rows_are_the_json_findings(cli: Cli) -> None:
    _, document = check_json(cli, DATAPARALLEL, CLEAN, "--model", CNN_SPEC)
    result = cli("check", DATAPARALLEL, CLEAN, "--model", CNN_SPEC, "--format", "csv")
    assert (result.exit_code, result.stderr) == (1, "")
    header, *rows = csv.reader(io.StringIO(result.stdout))
    assert header == CSV_HEADER
    expected = [
        [f["path"], g["check"], g["severity"], g["key"] or "", g["message"]]
        for f in document["files"]
        for g in f["findings"]
    ]
    assert rows == expected


def test_model_arg_is_passed_to_the_model(cli: Cli) -> None:
    """A 5-class CNN for a 10-class checkpoint: fc1 mismatches in size, nothing else."""
    code, report = check_json(cli, CLEAN, "--model", CNN_SPEC, "--model-arg", "num_classes=5")
    assert code == 1
    assert report["shape_mismatch"] == [
        {"key": "fc1.weight", "checkpoint": [10, 784], "expected": [5, 784]},
        {"key": "fc1.bias", "checkpoint": [10], "expected": [5]},
    ]
    assert report["missing"] == report["unexpected"] == []


def test_root_option_picks_the_weights(cli: Cli, tmp_path: Path) -> None:
    weights = tutorial_models().CNN().state_dict()
    path = tmp_path / "pair.pth"
    torch.save({"student": {"w": torch.ones(1)}, "teacher": weights}, path)
    code, report = check_json(cli, path, "--model", CNN_SPEC, "--root", "teacher")
    assert (code, report["ok"], report["missing"]) == (0, True, [])


# -- integrity, safety, finite, cpu-only ------------------------------------------------------------


def test_changed_record_fails_its_crc(cli: Cli, tmp_path: Path) -> None:
    broken = corrupted_copy(CLEAN, tmp_path)
    code, report = check_json(cli, broken)
    assert code == 1
    (finding,) = report["findings"]
    assert (finding["check"], finding["severity"]) == ("integrity", "error")
    assert "CRC-32" in finding["message"]
    assert finding["key"] is not None


def test_archive_without_crcs_is_only_information(cli: Cli) -> None:
    code, report = check_json(cli, COMMITTED_DIR / "cnn_state_dict_no_crc32.pth")
    assert (code, report["ok"]) == (0, True)
    assert [(f["check"], f["severity"]) for f in report["findings"]] == [("integrity", "info")]
    code, report = check_json(cli, COMMITTED_DIR / "cnn_state_dict_no_crc32.pth", "--strict")
    assert (code, report["ok"]) == (0, True)  # information never fails


def test_hostile_pickle_is_an_error_and_never_runs(cli: Cli, tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "hostile.pth"
    torch.save({"weight": torch.ones(2), "extra": SystemCall(marker)}, path)
    result = cli("check", path, "--format", "json")
    assert result.exit_code == 1
    (finding,) = cli_json(result)["findings"]
    assert (finding["check"], finding["severity"]) == ("safety", "error")
    assert "system" in finding["message"]
    assert not marker.exists()


def test_strict_fails_on_warnings(cli: Cli) -> None:
    """A whole pickled model needs an allowlist for weights_only loading: a warning."""
    code, report = check_json(cli, WHOLE_MODEL)
    assert (code, report["ok"]) == (0, True)
    assert [(f["check"], f["severity"]) for f in report["findings"]] == [("safety", "warning")]
    assert "add_safe_globals" in report["findings"][0]["message"]
    code, report = check_json(cli, WHOLE_MODEL, "--strict")
    assert (code, report["ok"]) == (1, False)
    result = cli("check", WHOLE_MODEL, "--strict")
    assert key_values(blocks(result.stdout)[0])["result"] == "FAILED"


def test_finite(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "nan.pth"
    torch.save({"ok": torch.ones(3), "bad": torch.tensor([1.0, float("nan"), float("inf"), float("-inf")])}, path)
    code, report = check_json(cli, path, "--finite")
    assert code == 1
    (finding,) = report["findings"]
    assert (finding["check"], finding["severity"], finding["key"]) == ("finite", "error", "bad")
    assert "1 NaN" in finding["message"] and "2 Inf" in finding["message"]
    assert check_json(cli, path)[0] == 0  # not asked for: not checked


def test_cpu_only(cli: Cli) -> None:
    code, report = check_json(cli, CUDA, "--cpu-only")
    assert code == 1
    (finding,) = report["findings"]
    assert (finding["check"], finding["severity"]) == ("cpu-only", "error")
    assert "cuda:0" in finding["message"] and f"ckpttool remap {CUDA}" in finding["message"]
    assert check_json(cli, CUDA)[0] == 0
    assert check_json(cli, CLEAN, "--cpu-only")[0] == 0


def test_like(cli: Cli) -> None:
    assert check_json(cli, SAFETENSORS, "--like", CLEAN)[0] == 0
    code, report = check_json(cli, DATAPARALLEL, "--like", CLEAN)
    assert code == 1
    assert report["suggestions"][0]["option"] == "--strip-prefix module."


# -- unreadable input and misuse: exit 2 --------------------------------------------------------------


def test_unreadable_file_exits_2(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "gone.pt"
    assert_one_error_line(cli("check", missing), "gone.pt")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(CLEAN.read_bytes()[:1500])
    assert_one_error_line(cli("check", truncated, "--format", "json"), "truncated.pth")


def test_unreadable_file_among_several_exits_2(cli: Cli, tmp_path: Path) -> None:
    assert_one_error_line(cli("check", CLEAN, tmp_path / "gone.pt", SAFETENSORS), "gone.pt")


def test_unreadable_reference_exits_2(cli: Cli, tmp_path: Path) -> None:
    assert_one_error_line(cli("check", CLEAN, "--like", tmp_path / "ref.pt"), "ref.pt")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--model", "no_such_package:Net"), "no_such_package"),
        (("--model", CNN_SPEC, "--model-arg", "classes"), "classes"),
        (("--model", CNN_SPEC, "--model-arg", "depth=3"), "depth"),
        (("--finite", "--root", "nowhere"), "nowhere"),
    ],
    ids=["bad-spec", "bad-arg", "unknown-arg", "bad-root"],
)
def test_misused_options_exit_2(cli: Cli, args: tuple[str, ...], named: str) -> None:
    assert_one_error_line(cli("check", CLEAN, *args), named)


def test_unknown_root_names_the_file(cli: Cli, tmp_path: Path) -> None:
    """With several files, the one line must say which file lacks the root."""
    other = tmp_path / "other.pth"
    torch.save({"nowhere": tutorial_models().CNN().state_dict()}, other)
    assert_one_error_line(cli("check", other, CLEAN, "--finite", "--root", "nowhere"), "nowhere", str(CLEAN))


def test_no_path_is_a_usage_error(cli: Cli) -> None:
    result = cli("check")
    assert (result.exit_code, result.stdout) == (2, "")
    assert "PATHS" in result.stderr


def test_help_lists_every_option(cli: Cli) -> None:
    result = cli("check", "--help")
    assert result.exit_code == 0
    for option in ("--model", "--model-arg", "--like", "--finite", "--cpu-only", "--root", "--strict", "--format"):
        assert option in result.stdout
