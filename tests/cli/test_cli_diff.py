"""`ckpttool diff A B` on the command line: exit codes (0 identical, 1 different, 2
unreadable or misused), data on stdout and diagnostics on stderr, and the table, JSON
and CSV forms of one report agreeing row for row.

Whether the comparisons themselves are right is tested against torch in
tests/compare/test_diff_truth.py; here the files are small and made in tmp_path.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from conftest import assert_json_error, cli_json
from groundtruth import COMMITTED_DIR
from safetensors.torch import save_file
from support.docs import section as docs_section

Cli = Callable[..., Result]
ERROR_PREFIX = "ckpttool: error: "
JSON_FIELDS = {
    "schema_version", "a", "b", "identical", "values_compared", "only_in_a", "only_in_b", "shape_mismatch",
    "dtype_mismatch", "value_mismatch", "entries_mismatch", "equal", "keys_only", "ignore_dtype",
}  # fmt: skip
CSV_HEADER = ["key", "difference", "detail"]
PTH = COMMITTED_DIR / "cnn_state_dict.pth"
SAFETENSORS = COMMITTED_DIR / "cnn.safetensors"


def save(obj: Any, path: Path) -> Path:
    torch.save(obj, path)
    return path


def summary(stdout: str) -> dict[str, str]:
    """The `name:  value` lines above the table."""
    block = stdout.split("\n\n", 1)[0]
    pairs = (line.split(":", 1) for line in block.splitlines())
    return {name.strip(): value.strip() for name, value in pairs}


def table_rows(stdout: str) -> list[list[str]]:
    """Rows of the table below the summary, cut at the columns its dashed rule marks."""
    parts = stdout.split("\n\n", 1)
    if len(parts) == 1:
        return []
    header, rule, *rows = parts[1].splitlines()
    spans, start = [], 0
    for dashes in rule.split("  "):
        if dashes:
            begin = rule.index(dashes, start)
            spans.append((begin, begin + len(dashes)))
            start = begin + len(dashes)
    assert [header[b:e].strip() for b, e in spans] == CSV_HEADER
    bounds = [b for b, _ in spans] + [None]
    return [[row[bounds[i] : bounds[i + 1]].strip() for i in range(len(spans))] for row in rows]


def strict_json(text: str) -> Any:
    """JSON as the standard defines it: no NaN or Infinity."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def assert_one_error_line(result: Result, *names: str, fmt: str = "table") -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    if fmt == "json":
        assert_json_error(result)
    else:
        assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


# -- identical ------------------------------------------------------------------------------------


def test_identical_table(cli: Cli) -> None:
    result = cli("diff", PTH, SAFETENSORS)
    assert result.exit_code == 0
    assert result.stderr == ""
    assert summary(result.stdout) == {"a": str(PTH), "b": str(SAFETENSORS), "result": "IDENTICAL", "equal tensors": "6"}
    assert table_rows(result.stdout) == []


def test_identical_json(cli: Cli) -> None:
    result = cli("diff", PTH, SAFETENSORS, "--format", "json")
    assert (result.exit_code, result.stderr) == (0, "")
    report = cli_json(result)
    assert set(report) == JSON_FIELDS
    assert report["schema_version"] == 1
    assert (report["a"], report["b"], report["identical"], report["equal"]) == (str(PTH), str(SAFETENSORS), True, 6)
    assert (report["keys_only"], report["values_compared"], report["ignore_dtype"]) == (False, True, False)


def test_identical_csv_has_only_the_header(cli: Cli) -> None:
    result = cli("diff", PTH, SAFETENSORS, "--format", "csv")
    assert result.exit_code == 0
    assert list(csv.reader(io.StringIO(result.stdout))) == [CSV_HEADER]


# -- different ------------------------------------------------------------------------------------


@pytest.fixture
def differing(tmp_path: Path) -> tuple[Path, Path]:
    """Two training checkpoints with one difference of every kind."""
    weights = {"same": torch.arange(4.0), "moved": MOVED_A, "cast": torch.ones(2), "shape": torch.ones(2, 3)}
    a = {**weights, "gone": torch.ones(1, 2)}
    b = {**weights, "moved": MOVED_B, "cast": torch.ones(2, dtype=torch.float64),
         "shape": torch.ones(3, 2), "new": torch.ones(5)}  # fmt: skip
    return (
        save({"epoch": 1, "state_dict": a}, tmp_path / "a.ckpt"),
        save({"epoch": 2, "state_dict": b}, tmp_path / "b.ckpt"),
    )


# One of three values moved by 0.5: |a-b| / |b| = 0.5 / 2.5, ||a-b|| / ||a|| = 0.5 / sqrt(1 + 4 + 16).
MOVED_A, MOVED_B = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 2.5, 4.0])
MOVED_DETAIL = "differ in 1 of 3 elements (33.33%); max abs 0.5, max rel 0.2, rel L2 0.109109"
EXPECTED_ROWS = [
    ["gone", "only in a", ""],
    ["new", "only in b", ""],
    ["shape", "shape", "[2, 3] vs [3, 2]"],
    ["cast", "dtype", "float32 vs float64"],
    ["moved", "values", MOVED_DETAIL],
    ["epoch", "entry", "1 vs 2"],
]


def test_moved_detail_is_what_torch_computes() -> None:
    """The numbers in MOVED_DETAIL, from torch."""
    a, b = MOVED_A.double(), MOVED_B.double()
    error = (a - b).abs()
    assert int((a != b).sum()) == 1 and f"{100 * (a != b).double().mean().item():.2f}" == "33.33"
    assert (error.max().item(), (error / b.abs()).max().item()) == (0.5, 0.2)
    assert f"{(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a)).item():.6g}" == "0.109109"


def test_differences_table(cli: Cli, differing: tuple[Path, Path]) -> None:
    result = cli("diff", *differing)
    assert (result.exit_code, result.stderr) == (1, "")
    assert summary(result.stdout)["result"] == "DIFFERENT"
    assert summary(result.stdout)["equal tensors"] == "1"
    assert table_rows(result.stdout) == EXPECTED_ROWS


def test_differences_csv(cli: Cli, differing: tuple[Path, Path]) -> None:
    result = cli("diff", *differing, "--format", "csv")
    assert (result.exit_code, result.stderr) == (1, "")
    header, *rows = csv.reader(io.StringIO(result.stdout))
    assert header == CSV_HEADER
    assert rows == EXPECTED_ROWS


def test_differences_json(cli: Cli, differing: tuple[Path, Path]) -> None:
    result = cli("diff", *differing, "--format", "json")
    assert (result.exit_code, result.stderr) == (1, "")
    report = cli_json(result)
    assert report["identical"] is False
    assert (report["only_in_a"], report["only_in_b"]) == (["gone"], ["new"])
    assert report["shape_mismatch"] == [{"key": "shape", "a": [2, 3], "b": [3, 2]}]
    assert report["dtype_mismatch"] == [{"key": "cast", "a": "float32", "b": "float64"}]
    (row,) = report["value_mismatch"]
    assert row == {
        "key": "moved", "mismatched": 1, "numel": 3, "share": 1 / 3, "max_abs": 0.5, "max_rel": 0.2,
        "rel_l2": pytest.approx(0.5 / math.sqrt(21), rel=1e-15),
    }  # fmt: skip
    assert report["entries_mismatch"] == [{"key": "epoch", "a": 1, "b": 2}]
    assert report["equal"] == 1


def test_tolerance_options_change_the_exit_code(cli: Cli, tmp_path: Path) -> None:
    a = save({"w": torch.tensor([1.0, 2.0])}, tmp_path / "a.pth")
    b = save({"w": torch.tensor([1.0, 2.001])}, tmp_path / "b.pth")
    assert cli("diff", a, b).exit_code == 1
    assert cli("diff", a, b, "--atol", "0.01").exit_code == 0
    assert cli("diff", a, b, "--rtol", "0.001").exit_code == 0
    assert cli("diff", a, b, "--rtol", "0.0001").exit_code == 1


def test_within_a_tolerance_the_result_says_equal_not_identical(cli: Cli, tmp_path: Path) -> None:
    x, y = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.001])
    assert torch.allclose(x, y, atol=0.01, rtol=0) and not torch.equal(x, y)
    a, b = save({"w": x}, tmp_path / "a.pth"), save({"w": y}, tmp_path / "b.pth")
    result = cli("diff", a, b, "--atol", "0.01")
    assert (result.exit_code, result.stderr) == (0, "")
    assert summary(result.stdout)["result"] == "EQUAL within atol 0.01, rtol 0 (as torch.allclose)"
    assert cli_json(cli("diff", a, b, "--atol", "0.01", "--format", "json"))["identical"] is True


def test_equal_nan_option(cli: Cli, tmp_path: Path) -> None:
    path = save({"w": torch.tensor([1.0, float("nan")])}, tmp_path / "nan.pth")
    assert cli("diff", path, path).exit_code == 1
    result = cli("diff", path, path, "--equal-nan", "--format", "json")
    assert (result.exit_code, cli_json(result)["identical"]) == (0, True)


def test_keys_only_says_values_were_not_compared(cli: Cli, tmp_path: Path) -> None:
    """Values differ, keys, shapes and dtypes match: exit 0, but never IDENTICAL."""
    a = save({"w": torch.zeros(3)}, tmp_path / "a.pth")
    b = save({"w": torch.ones(3)}, tmp_path / "b.pth")
    result = cli("diff", a, b, "--keys-only")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        f"a:                 {a}\n"
        f"b:                 {b}\n"
        "result:            keys, shapes and dtypes match (values not compared)\n"
        "matching tensors:  1\n"
    )
    report = cli_json(cli("diff", a, b, "--keys-only", "--format", "json"))
    assert (report["keys_only"], report["values_compared"], report["identical"]) == (True, False, None)
    assert list(csv.reader(io.StringIO(cli("diff", a, b, "--keys-only", "--format", "csv").stdout))) == [CSV_HEADER]


def test_keys_only_with_a_difference(cli: Cli, tmp_path: Path) -> None:
    a = save({"w": torch.zeros(3), "v": torch.zeros(2)}, tmp_path / "a.pth")
    b = save({"w": torch.ones(3, dtype=torch.float16), "v": torch.ones(2)}, tmp_path / "b.pth")
    result = cli("diff", a, b, "--keys-only")
    assert (result.exit_code, result.stderr) == (1, "")
    assert summary(result.stdout)["result"] == "DIFFERENT (values not compared)"
    assert summary(result.stdout)["matching tensors"] == "1"
    assert table_rows(result.stdout) == [["w", "dtype", "float32 vs float16"]]
    report = cli_json(cli("diff", a, b, "--keys-only", "--format", "json"))
    assert (report["identical"], report["values_compared"]) == (False, False)


# -- --ignore-dtype ---------------------------------------------------------------------------------


def test_ignore_dtype_compares_values_across_dtypes(cli: Cli, tmp_path: Path) -> None:
    """float32 against float64 and bfloat16 copies of exactly representable values."""
    values = torch.tensor([0.5, -2.0, 3.0])
    a = save({"w": values, "n": torch.tensor([1, 2], dtype=torch.int32)}, tmp_path / "a.pth")
    b = save({"w": values.bfloat16(), "n": torch.tensor([1, 2])}, tmp_path / "b.pth")
    assert torch.equal(values, values.bfloat16().float())
    result = cli("diff", a, b, "--ignore-dtype")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        f"a:              {a}\n"
        f"b:              {b}\n"
        "result:         IDENTICAL\n"
        "equal tensors:  2\n"
        "dtypes:         2 tensors of another dtype, compared by value (--ignore-dtype)\n"
    )
    report = cli_json(cli("diff", a, b, "--ignore-dtype", "--format", "json"))
    assert (report["identical"], report["ignore_dtype"], report["equal"]) == (True, True, 2)
    assert [row["key"] for row in report["dtype_mismatch"]] == ["w", "n"]  # still reported, not counted
    assert cli("diff", a, b).exit_code == 1


def test_ignore_dtype_still_reports_values(cli: Cli, tmp_path: Path) -> None:
    a = save({"w": MOVED_A}, tmp_path / "a.pth")
    b = save({"w": MOVED_B.double()}, tmp_path / "b.pth")
    result = cli("diff", a, b, "--ignore-dtype")
    assert (result.exit_code, result.stderr) == (1, "")
    assert summary(result.stdout)["result"] == "DIFFERENT"
    assert table_rows(result.stdout) == [["w", "values", MOVED_DETAIL]]


# -- --all: nested entries ----------------------------------------------------------------------------


def test_all_lists_each_difference_once(cli: Cli, tmp_path: Path) -> None:
    """A training checkpoint two epochs apart: the loss (a 0-dim tensor) once as values,
    the learning rate and a nested config value as entries, a key only one file has."""

    def checkpoint(epoch: int, lr: float, loss: float, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": {"w": torch.ones(2)},
            "optimizer": {"state": {}, "param_groups": [{"lr": lr, "betas": (0.9, 0.999), "params": [0]}]},
            "loss": torch.tensor(loss),
            "config": {"data": {"batch": 32, **extra}},
        }

    a = save(checkpoint(1, 1e-3, 0.5, {"seed": 0}), tmp_path / "a.pt")
    b = save(checkpoint(2, 1e-4, 0.25, {}), tmp_path / "b.pt")
    result = cli("diff", a, b, "--all")
    assert (result.exit_code, result.stderr) == (1, "")
    assert summary(result.stdout)["equal tensors"] == "1"
    assert table_rows(result.stdout) == [
        ["loss", "values", "differ in 1 of 1 element (100.00%); max abs 0.25, max rel 1, rel L2 0.5"],
        ["epoch", "entry", "1 vs 2"],
        ["optimizer.param_groups.0.lr", "entry", "0.001 vs 0.0001"],
        ["config.data.seed", "entry", "0 vs (absent)"],
    ]
    report = cli_json(cli("diff", a, b, "--all", "--format", "json"))
    assert report["entries_mismatch"][-1] == {"key": "config.data.seed", "a": 0, "b": None, "absent": "b"}


def test_overflowing_errors_still_give_valid_json(cli: Cli, tmp_path: Path) -> None:
    """float64 values whose difference (or ratio) exceeds the largest double: the report is
    still JSON, exit 1, not an internal error."""
    a = save({"w": torch.tensor([1e308, 1.0], dtype=torch.float64)}, tmp_path / "a.pth")
    b = save({"w": torch.tensor([-1e308, 5e-324], dtype=torch.float64)}, tmp_path / "b.pth")
    result = cli("diff", a, b, "--format", "json")
    assert result.exit_code == 1, result.stderr
    assert result.stderr == ""
    report = strict_json(result.stdout)
    (row,) = report["value_mismatch"]
    assert (row["key"], row["mismatched"]) == ("w", 2)
    assert row["max_abs"] is None or isinstance(row["max_abs"], str) or math.isfinite(row["max_abs"])


def test_all_and_roots_are_accepted(cli: Cli, tmp_path: Path) -> None:
    weights = {"w": torch.ones(2)}
    path = save({"model": weights, "ema": {"w": torch.zeros(2)}}, tmp_path / "both.pt")
    assert cli("diff", path, path, "--all").exit_code == 0
    assert cli("diff", path, path, "--root-a", "model", "--root-b", "ema").exit_code == 1
    assert cli("diff", path, path, "--root-a", "ema", "--root-b", "ema").exit_code == 0


@pytest.mark.parametrize("columns", [80, 120])
def test_table_fits_the_terminal(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    """Long keys are cut with … to the terminal's width, details wrap (their numbers are
    never cut); CSV keeps them whole."""
    key = "model.layers.0.self_attn.rotary_embedding.inverse_frequencies.weight"
    a, b = save(readme_checkpoint(1), tmp_path / "a.pt"), save(readme_checkpoint(2), tmp_path / "b.pt")
    long_a, long_b = save({key: MOVED_A}, tmp_path / "la.pt"), save({key: MOVED_B}, tmp_path / "lb.pt")
    monkeypatch.setenv("COLUMNS", str(columns))
    for pair in ((a, b), (long_a, long_b)):
        result = cli("diff", *pair, "--all")
        assert result.exit_code == 1
        assert max(len(line) for line in result.stdout.splitlines()) <= columns, result.stdout
    result = cli("diff", long_a, long_b)
    assert ("…" in result.stdout) is (len(key) + len("values") + 16 + 4 > columns)
    table = result.stdout.split("\n\n", 1)[1].splitlines()
    detail_column = [m.start() for m in re.finditer("-+", table[1])][2]  # the ruler under the headers
    wrapped = " ".join(line[detail_column:].strip() for line in table[2:] if not line.startswith("("))
    assert wrapped == MOVED_DETAIL
    assert list(csv.reader(io.StringIO(cli("diff", long_a, long_b, "--format", "csv").stdout)))[1] == [
        key, "values", MOVED_DETAIL,
    ]  # fmt: skip


# -- the documentation's examples ---------------------------------------------------------------------


def readme_diff_section() -> tuple[list[list[str]], str]:
    """The commands of the documentation's diff section and the output it shows (`$ command` first)."""
    section = docs_section("diff A B")
    commands_block, shown = section.split("```bash\n", 1)[1].split("```", 1)
    output = shown.split("```\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line.split("#", 1)[0])[1:] for line in commands_block.splitlines() if line.strip()]
    return commands, output


def readme_checkpoint(epoch: int) -> dict[str, Any]:
    """The two epochs the README's output shows: one bias value, the loss, the lr and the epoch moved."""
    return {
        "epoch": epoch,
        "model_state_dict": {"0.weight": torch.ones(3, 4), "0.bias": torch.tensor([0.5 + (epoch - 1), -1.0, 2.0])},
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 10.0 ** -(epoch + 2), "params": [0, 1]}]},
        "loss": torch.tensor(0.5 / epoch),
    }


def test_readme_examples_run_as_shown(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command of the README's diff section, on files of the names it uses, with the exit
    code it implies; the output it shows, exactly."""
    commands, shown = readme_diff_section()
    weights = {"conv.weight": torch.randn(4, 3), "conv.bias": torch.randn(4), "bn.num_batches_tracked": torch.tensor(3)}
    save(weights, tmp_path / "model.pth")
    save_file(weights, tmp_path / "model.safetensors")
    save(weights, tmp_path / "resnet34.pth")
    save_file(
        {k: v.bfloat16() if v.is_floating_point() else v for k, v in weights.items()}, tmp_path / "r34_bf16.safetensors"
    )
    save(weights, tmp_path / "a.pth")
    save({k: v + 1 for k, v in weights.items()}, tmp_path / "b.pth")
    save(readme_checkpoint(1), tmp_path / "ckpt1.pth")
    save(readme_checkpoint(2), tmp_path / "ckpt2.pth")
    monkeypatch.chdir(tmp_path)
    expected_exit = {"model.pth": 0, "resnet34.pth": 0, "a.pth": 0, "ckpt1.pth": 1}
    assert [c[1] for c in commands] == list(expected_exit)
    for command in commands:
        result = cli(*command)
        assert (result.exit_code, result.stderr) == (expected_exit[command[1]], ""), command
    first, *lines = shown.splitlines()
    result = cli(*shlex.split(first.removeprefix("$ "))[1:])
    assert result.stdout.splitlines() == lines


# -- unreadable input and misuse: exit 2, one line on stderr ------------------------------------


def unreadable_files(folder: Path) -> dict[str, Path]:
    text = folder / "notes.pt"
    text.write_text("these are not tensors\n")
    empty = folder / "empty.pth"
    empty.write_bytes(b"")
    truncated = folder / "truncated.pth"
    truncated.write_bytes(PTH.read_bytes()[:1000])
    not_sharded = folder / "folder"
    not_sharded.mkdir()
    return {"missing": folder / "gone.pth", "text": text, "empty": empty, "truncated": truncated, "folder": not_sharded}


@pytest.mark.parametrize("kind", ["missing", "text", "empty", "truncated", "folder"])
@pytest.mark.parametrize("side", ["a", "b"])
def test_unreadable_input_exits_2(cli: Cli, tmp_path: Path, kind: str, side: str) -> None:
    bad = unreadable_files(tmp_path)[kind]
    args = (bad, PTH) if side == "a" else (PTH, bad)
    for fmt in ("table", "json"):
        assert_one_error_line(cli("diff", *args, "--format", fmt), bad.name, fmt=fmt)


def test_unknown_root_names_the_root_and_the_file(cli: Cli) -> None:
    assert_one_error_line(cli("diff", PTH, SAFETENSORS, "--root-b", "nowhere"), "nowhere", str(SAFETENSORS))


@pytest.mark.parametrize(
    "args",
    [("--atol", "-1"), ("--rtol", "-0.5"), ("--atol", "tight"), ("--format", "xml")],
    ids=["negative-atol", "negative-rtol", "not-a-number", "unknown-format"],
)
def test_bad_options_exit_2(cli: Cli, args: tuple[str, ...]) -> None:
    result = cli("diff", PTH, SAFETENSORS, *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert args[0] in result.stderr or "negative" in result.stderr


def test_one_path_is_a_usage_error(cli: Cli) -> None:
    result = cli("diff", PTH)
    assert (result.exit_code, result.stdout) == (2, "")
    assert "B" in result.stderr


def test_help_lists_every_option(cli: Cli) -> None:
    result = cli("diff", "--help")
    assert result.exit_code == 0
    options = ("--atol", "--rtol", "--equal-nan", "--ignore-dtype", "--keys-only", "--all", "--root-a", "--root-b")
    for option in (*options, "--format"):
        assert option in result.stdout
