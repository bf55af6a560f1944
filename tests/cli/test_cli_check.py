"""`ckpttool check PATH...` on the command line: exit 0 when every check holds, 1 on any
error-level finding (any warning too with --strict) — an unreadable file among several
included — and 2 when no path could be read at all or an option is misused; the table
(exactly, at 80 columns), JSON (one shape for one or many paths) and CSV forms of one
report; integrity, safety, --finite and --cpu-only findings with their severities.

Agreement of `--model` with `load_state_dict`, and every suggested command applied and
reloaded, are tested in tests/compare/test_check_truth.py.
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
CHECK_MODELS = Path(__file__).resolve().parents[1] / "compare" / "checkmodels.py"
FILE_FIELDS = {"path", "ok", "readable", "findings", "keys", "missing", "unexpected", "shape_mismatch",
               "dtype_mismatch", "allowed_missing", "allowed_unexpected", "allow_hint", "suggestions"}  # fmt: skip
FINDING_FIELDS = {"check", "severity", "key", "message", "remedy"}
SUGGESTION_FIELDS = {"fix", "option", "command", "fixes", "missing_after", "unexpected_after",
                     "shape_mismatch_after", "passes"}  # fmt: skip
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


def check_document(cli: Cli, *args: Any) -> tuple[int, dict[str, Any]]:
    """The whole JSON document: `{"schema_version": 2, "ok", "files": [...]}`."""
    result = cli("check", *args, "--format", "json")
    assert result.exit_code in (0, 1), (result.exit_code, result.stderr)
    assert result.stderr == ""
    document = cli_json(result)
    assert set(document) == {"schema_version", "ok", "files"}
    assert document["schema_version"] == 2
    assert all(set(f) == FILE_FIELDS for f in document["files"])
    assert document["ok"] is all(f["ok"] for f in document["files"])
    return result.exit_code, document


def check_json(cli: Cli, *args: Any) -> tuple[int, dict[str, Any]]:
    """The report of the one path checked."""
    code, document = check_document(cli, *args)
    (report,) = document["files"]
    return code, report


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
    assert key_values(head) == {"file": str(path), "result": "OK", "findings": "none"}


def test_json_for_one_file_has_the_shape_of_several(cli: Cli) -> None:
    code, document = check_document(cli, CLEAN, "--model", CNN_SPEC)
    assert (code, document["ok"]) == (0, True)
    (report,) = document["files"]
    assert (report["path"], report["ok"], report["readable"]) == (str(CLEAN), True, True)
    assert report["keys"] == {"root": "", "in_file": len(CNN_KEYS), "matched": len(CNN_KEYS)}
    assert report["findings"] == report["missing"] == report["unexpected"] == report["suggestions"] == []


def test_json_for_several_files(cli: Cli) -> None:
    code, document = check_document(cli, CLEAN, DATAPARALLEL, "--model", CNN_SPEC)
    assert (code, document["ok"]) == (1, False)
    assert [(f["path"], f["ok"]) for f in document["files"]] == [(str(CLEAN), True), (str(DATAPARALLEL), False)]
    code, document = check_document(cli, CLEAN, SAFETENSORS)
    assert (code, document["ok"]) == (0, True)
    assert [f["keys"] for f in document["files"]] == [None, None]  # no --model: keys not compared


# -- failing files: findings, suggestions, forms ---------------------------------------------------


def test_json_suggestion_fields(cli: Cli) -> None:
    code, report = check_json(cli, DATAPARALLEL, "--model", CNN_SPEC)
    assert code == 1
    assert all(set(f) == FINDING_FIELDS for f in report["findings"])
    best = report["suggestions"][0]
    assert set(best) == SUGGESTION_FIELDS
    fixed = COMMITTED_DIR / "dataparallel_state_dict.fixed.pth"
    assert best == {"fix": "strip prefix 'module.'", "option": "--strip-prefix module.", "fixes": len(CNN_KEYS),
                    "command": f"ckpttool convert {DATAPARALLEL} {fixed} --strip-prefix module.",
                    "missing_after": 0, "unexpected_after": 0, "shape_mismatch_after": 0, "passes": True}  # fmt: skip
    assert report["missing"] == CNN_KEYS
    assert report["unexpected"] == [f"module.{k}" for k in CNN_KEYS]
    assert report["keys"] == {"root": "", "in_file": len(CNN_KEYS), "matched": 0}


def test_csv_rows_are_the_json_findings(cli: Cli) -> None:
    _, document = check_document(cli, DATAPARALLEL, CLEAN, "--model", CNN_SPEC)
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
    code, report = check_json(cli, path)
    assert code == 1
    (finding,) = report["findings"]
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


# -- several paths: every one reported --------------------------------------------------------------


def unreadable_files(folder: Path) -> tuple[Path, Path]:
    empty = folder / "empty.pth"
    empty.write_bytes(b"")
    truncated = folder / "truncated.pth"
    truncated.write_bytes(CLEAN.read_bytes()[:1500])
    return empty, truncated


def test_good_empty_truncated_good(cli: Cli, tmp_path: Path) -> None:
    """The unreadable files are error findings of their own; the good ones are still checked."""
    empty, truncated = unreadable_files(tmp_path)
    paths = [CLEAN, empty, truncated, SAFETENSORS]
    code, document = check_document(cli, *paths)
    assert (code, document["ok"]) == (1, False)
    files = document["files"]
    assert [(f["path"], f["ok"], f["readable"]) for f in files] == [
        (str(CLEAN), True, True),
        (str(empty), False, False),
        (str(truncated), False, False),
        (str(SAFETENSORS), True, True),
    ]
    for unreadable in files[1:3]:
        (finding,) = unreadable["findings"]
        assert (finding["check"], finding["severity"], finding["key"]) == ("read", "error", None)
    assert "empty" in files[1]["findings"][0]["message"]
    assert "truncated" in files[2]["findings"][0]["message"]


def test_good_empty_truncated_good_table(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)
    unreadable_files(tmp_path)
    shutil.copyfile(CLEAN, tmp_path / "a.pth")
    shutil.copyfile(SAFETENSORS, tmp_path / "b.safetensors")
    result = cli("check", "a.pth", "empty.pth", "truncated.pth", "b.safetensors")
    assert (result.exit_code, result.stderr) == (1, "")
    assert result.stdout == (
        "file:      a.pth\n"
        "result:    OK\n"
        "findings:  none\n"
        "\n"
        "file:      empty.pth\n"
        "result:    UNREADABLE\n"
        "findings:  1 error\n"
        "error:     empty file: not a checkpoint\n"
        "\n"
        "file:      truncated.pth\n"
        "result:    UNREADABLE\n"
        "findings:  1 error\n"
        "error:     zip end-of-central-directory record not found (file truncated?)\n"
        "\n"
        "file:      b.safetensors\n"
        "result:    OK\n"
        "findings:  none\n"
        "\n"
        "file           result        errors    warnings\n"
        "-------------  ----------  --------  ----------\n"
        "a.pth          OK                 0           0\n"
        "empty.pth      UNREADABLE         1           0\n"
        "truncated.pth  UNREADABLE         1           0\n"
        "b.safetensors  OK                 0           0\n"
    )


def test_no_path_readable_exits_2(cli: Cli, tmp_path: Path) -> None:
    """Exit 2 only when nothing could be read: the report still comes (JSON for CI), and
    one stderr line says why."""
    empty, truncated = unreadable_files(tmp_path)
    result = cli("check", empty, truncated, "--format", "json")
    assert result.exit_code == 2
    document = cli_json(result)
    assert (document["schema_version"], document["ok"]) == (2, False)
    assert [(f["path"], f["readable"]) for f in document["files"]] == [(str(empty), False), (str(truncated), False)]
    (line,) = result.stderr.splitlines()
    assert line == f"{ERROR_PREFIX}none of the 2 paths could be read (first: {empty}: empty file: not a checkpoint)"
    missing = tmp_path / "gone.pt"
    result = cli("check", missing)
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{ERROR_PREFIX}{missing}: ")
    assert key_values(blocks(result.stdout)[0])["result"] == "UNREADABLE"


def test_exit_codes_over_path_sets(cli: Cli, tmp_path: Path) -> None:
    empty, truncated = unreadable_files(tmp_path)
    (tmp_path / "broken").mkdir()
    broken = corrupted_copy(CLEAN, tmp_path / "broken")
    cases = [
        ((CLEAN, SAFETENSORS), 0),
        ((CLEAN, broken), 1),
        ((CLEAN, empty), 1),
        ((empty,), 2),
        ((empty, truncated, tmp_path / "gone.pt"), 2),
    ]
    for paths, expected in cases:
        assert cli("check", *paths).exit_code == expected, paths


def test_missing_root_is_a_finding_of_that_file(cli: Cli, tmp_path: Path) -> None:
    """With several files, one that lacks --root fails alone; the others are checked."""
    other = tmp_path / "other.pth"
    torch.save({"nowhere": tutorial_models().CNN().state_dict()}, other)
    code, document = check_document(cli, other, CLEAN, "--finite", "--root", "nowhere")
    assert code == 1
    assert [f["ok"] for f in document["files"]] == [True, False]
    (finding,) = document["files"][1]["findings"]
    assert (finding["check"], finding["severity"]) == ("finite", "error")
    assert "nowhere" in finding["message"]


# -- keys: the matched line, fixes as commands, collapsed rows, allowances (80 columns) -----------------


def test_table_at_80_columns_with_a_fix(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The matched line first, the fix as a command to paste, then the rows."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(DATAPARALLEL, tmp_path / "dp.pth")
    result = cli("check", "dp.pth", "--model", CNN_SPEC)
    assert (result.exit_code, result.stderr) == (1, "")
    assert CNN_KEYS == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias"]
    missing = [f"error       model    {k:<19}  missing: in the model, not in the file" for k in CNN_KEYS]
    unexpected = [f"error       model    {'module.' + k:<19}  unexpected: not in the model" for k in CNN_KEYS]
    assert result.stdout.splitlines() == [
        "file:      dp.pth",
        "result:    FAILED",
        "keys:      matched 0 of 6 keys; 6 missing, 6 unexpected",
        "findings:  12 errors",
        "",
        "fix: strip prefix 'module.' (then every key matches)",
        "  ckpttool convert dp.pth dp.fixed.pth --strip-prefix module.",
        "",
        "severity    check    key                  message",
        "----------  -------  -------------------  --------------------------------------",
        *missing,
        *unexpected,
    ]


def test_training_checkpoint_fix_keeps_its_structure(cli: Cli, tmp_path: Path) -> None:
    """A DataParallel training checkpoint: the command renames inside the whole file."""
    weights = {f"module.{k}": v for k, v in tutorial_models().CNN().state_dict().items()}
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"epoch": 3, "state_dict": weights, "optimizer": {"state": {}, "param_groups": []}}, path)
    code, report = check_json(cli, path, "--model", CNN_SPEC)
    assert code == 1
    assert report["suggestions"][0]["command"] == (
        f"ckpttool convert {path} {tmp_path / 'ckpt.fixed.pth.tar'} --keep-structure --strip-prefix module."
    )


@pytest.mark.parametrize(
    ("name", "fixed"),
    [
        ("model.pth", "model.fixed.pth"),
        ("ckpt.pth.tar", "ckpt.fixed.pth.tar"),
        ("epoch=3.ckpt", "epoch=3.fixed.ckpt"),
        ("weights", "weights.fixed.pth"),
        ("sharded/", "sharded.fixed.safetensors"),
    ],
)
def test_fixed_output_names(tmp_path: Path, name: str, fixed: str) -> None:
    """The DST of a suggested command sits next to the file; a folder becomes one safetensors file."""
    from ckpttool.ops.compare import fixed_name

    path = tmp_path / name
    path.mkdir() if name.endswith("/") else path.write_bytes(b"")
    assert fixed_name(str(path) + ("/" if name.endswith("/") else "")) == str(tmp_path / fixed)


def test_warm_start_table_hint_and_allowance(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Model A's weights for model B (A plus a head): FAILED with the options that accept
    the new layer; with them, OK and one info row saying what was allowed."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)
    torch.save(tutorial_models().CNN().state_dict(), "model_a.pth")
    spec = f"{CHECK_MODELS}:WarmStartCNN"
    result = cli("check", "model_a.pth", "--model", spec)
    assert (result.exit_code, result.stderr) == (1, "")
    assert result.stdout.splitlines() == [
        "file:      model_a.pth",
        "result:    FAILED",
        "keys:      matched 6 of 6 keys; 2 missing",
        "findings:  2 errors",
        "",
        "left out on purpose (a warm start)? accept them with:",
        "  --allow-missing 'head.*'",
        "",
        "severity    check    key          message",
        "----------  -------  -----------  --------------------------------------",
        "error       model    head.weight  missing: in the model, not in the file",
        "error       model    head.bias    missing: in the model, not in the file",
    ]
    result = cli("check", "model_a.pth", "--model", spec, "--allow-missing", "head.*", "--allow-missing", "tail.*")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "file:      model_a.pth",
        "result:    OK",
        "keys:      matched 6 of 6 keys; 2 missing (all allowed)",
        "findings:  2 info",
        "",
        "severity    check    key    message",
        "----------  -------  -----  ----------------------------------------------",
        "info        model           --allow-missing head.*: 2 missing keys allowed",
        "info        model           --allow-missing tail.*: no missing key matches",
    ]


def test_allowance_is_for_its_own_kind_only(cli: Cli, tmp_path: Path) -> None:
    """--allow-unexpected does not excuse a missing key, nor a size mismatch."""
    path = tmp_path / "model_a.pth"
    torch.save(tutorial_models().CNN().state_dict(), path)
    code, report = check_json(cli, path, "--model", f"{CHECK_MODELS}:WarmStartCNN", "--allow-unexpected", "*")
    assert (code, report["ok"], report["allowed_unexpected"]) == (1, False, [])
    code, report = check_json(cli, CLEAN, "--model", CNN_SPEC, "--model-arg", "num_classes=5",
                              "--allow-missing", "*", "--allow-unexpected", "*")  # fmt: skip
    assert (code, report["ok"]) == (1, False)
    assert {f["key"] for f in report["findings"] if f["severity"] == "error"} == {"fc1.weight", "fc1.bias"}


def test_allowances_need_keys_to_compare(cli: Cli) -> None:
    assert_one_error_line(cli("check", CLEAN, "--allow-missing", "head.*"), "--model")


def test_many_differences_collapse(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in common: the matched line says so, and each kind of row stops after a few
    with a row counting the rest (JSON lists every key)."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)
    expected = {f"layer.{i}.weight": torch.zeros(2) for i in range(12)}
    torch.save({f"block{i}.weight": torch.zeros(2) for i in range(14)}, "other.pth")
    torch.save(expected, "ref.pth")
    result = cli("check", "other.pth", "--like", "ref.pth")
    assert (result.exit_code, result.stderr) == (1, "")
    missing = [f"error       like     layer.{i}.weight  missing: in the reference, not in the file" for i in range(5)]
    unexpected = [f"error       like     block{i}.weight   unexpected: not in the reference" for i in range(5)]
    assert result.stdout.splitlines() == [
        "file:      other.pth",
        "result:    FAILED",
        "keys:      matched 0 of 14 keys; 12 missing, 14 unexpected",
        "findings:  26 errors",
        "note:      no key matches, and no rename or other root helps",
        "",
        "severity    check    key             message",
        "----------  -------  --------------  ------------------------------------------",
        *missing,
        "error       like     (7 more)        missing: all in --format json or csv",
        *unexpected,
        "error       like     (9 more)        unexpected: all in --format json or csv",
    ]
    _, report = check_json(cli, "other.pth", "--like", "ref.pth")
    assert len(report["missing"]) == 12 and len(report["unexpected"]) == 14
    assert len(report["findings"]) == 26


# -- misuse: exit 2 ----------------------------------------------------------------------------------


def test_unreadable_reference_exits_2(cli: Cli, tmp_path: Path) -> None:
    assert_one_error_line(cli("check", CLEAN, "--like", tmp_path / "ref.pt"), "ref.pt")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--model", "no_such_package:Net"), "no_such_package"),
        (("--model", CNN_SPEC, "--model-arg", "classes"), "classes"),
        (("--model", CNN_SPEC, "--model-arg", "depth=3"), "depth"),
    ],
    ids=["bad-spec", "bad-arg", "unknown-arg"],
)
def test_misused_options_exit_2(cli: Cli, args: tuple[str, ...], named: str) -> None:
    """A model that cannot be built fails before any file is checked, however many there are."""
    assert_one_error_line(cli("check", CLEAN, *args), named)
    assert_one_error_line(cli("check", CLEAN, SAFETENSORS, *args), named)


def test_no_path_is_a_usage_error(cli: Cli) -> None:
    result = cli("check")
    assert (result.exit_code, result.stdout) == (2, "")
    assert "PATHS" in result.stderr


def test_help_lists_every_option(cli: Cli) -> None:
    result = cli("check", "--help")
    assert result.exit_code == 0
    options = ("--model", "--model-arg", "--like", "--allow-missing", "--allow-unexpected", "--finite",
               "--cpu-only", "--root", "--strict", "--format")  # fmt: skip
    for option in options:
        assert option in result.stdout
