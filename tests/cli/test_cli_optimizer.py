"""`ckpttool optimizer PATH` on the command line: the table, JSON and CSV forms of one
report, names from `--model` and the guess without it, and exit code 2 with one stderr
line for an unreadable file or a model spec that cannot be built.

Agreement with `optimizer.state_dict()` is tested in tests/ops/compare/test_optimizer_truth.py.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from support.cli import assert_json_error, assert_one_error_line, cli_json, table
from support.groundtruth import COMMITTED_DIR, FIXTURES_DIR, torch_load_trusted

Cli = Callable[..., Result]
ADAM_FILE = COMMITTED_DIR / "cnn_model_optimizer.pt"
LIGHTNING_FILE = COMMITTED_DIR / "lightning.ckpt"
CNN_SPEC = f"{FIXTURES_DIR / 'tutorial_models.py'}:CNN"
CNN_NAMES = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias"]
REPORT_FIELDS = {"path", "type", "inferred", "names", "param_groups", "state", "notes"}
STATE_FIELDS = {"index", "name", "step", "tensors", "values"}
CSV_HEADER = ["optimizer", "type", "index", "name", "step", "tensors"]


def blocks(stdout: str) -> list[list[str]]:
    return [block.splitlines() for block in stdout.strip().split("\n\n")]


def key_values(block: list[str]) -> dict[str, str]:
    return {name.strip(): value.strip() for name, value in (line.split(":", 1) for line in block)}


def state_text(tensors: dict[str, dict[str, Any]]) -> str:
    """How the table and CSV write a parameter's state tensors."""
    return "; ".join(f"{k} [{', '.join(map(str, t['shape']))}] {t['dtype']}" for k, t in tensors.items())


# -- output forms -----------------------------------------------------------------------------------


def test_json_document(cli: Cli) -> None:
    result = cli("optimizer", ADAM_FILE, "--format", "json")
    assert (result.exit_code, result.stderr) == (0, "")
    document = cli_json(result)
    assert set(document) == {"schema_version", "path", "optimizers"}
    assert (document["schema_version"], document["path"]) == (1, str(ADAM_FILE))
    (report,) = document["optimizers"]
    assert set(report) == REPORT_FIELDS
    assert all(set(row) == STATE_FIELDS for row in report["state"])
    assert (report["path"], report["type"], report["inferred"], report["names"]) == ("optimizer", "Adam", True, "file")
    assert [row["name"] for row in report["state"]] == CNN_NAMES


def test_table_with_names_from_model(cli: Cli) -> None:
    result = cli("optimizer", ADAM_FILE, "--model", CNN_SPEC)
    assert (result.exit_code, result.stderr) == (0, "")
    head, groups, states, *rest = blocks(result.stdout)
    assert key_values(head) == {
        "optimizer": "optimizer",
        "type": "Adam (inferred)",
        "names": "from --model",
        "param groups": "1",
    }
    truth = torch_load_trusted(ADAM_FILE)["optimizer"]
    (group,) = truth["param_groups"]
    # One row per hyper-parameter, one column per group.
    hyper = {row["hyper-parameter"]: row["group 0"] for row in table(groups)}
    assert hyper["params"] == str(len(group["params"]))
    assert set(hyper) == {"params", *(k for k in group if k != "params")}
    assert hyper["lr"] == str(group["lr"]) and hyper["betas"] == "[0.9, 0.999]"
    rows = table(states)
    assert [r["name"] for r in rows] == CNN_NAMES
    assert [r["step"] for r in rows] == [str(int(s["step"])) for s in truth["state"].values()]
    assert rows[0]["state tensors"] == "exp_avg [8, 1, 3, 3] float32; exp_avg_sq [8, 1, 3, 3] float32"
    assert rest == []  # exact names need no note


def test_table_says_names_are_a_guess(cli: Cli) -> None:
    result = cli("optimizer", ADAM_FILE)
    assert result.exit_code == 0
    head, *_, notes = blocks(result.stdout)
    assert key_values(head)["names"] == "guessed from the file's weights"
    assert any(line.startswith("note: ") and "guess" in line for line in notes)


def step_text(step: Any) -> str:
    """CSV writes a step count kept as a float (Adam's float32 `step` tensor) as the integer it is."""
    return str(int(step)) if isinstance(step, float) and step.is_integer() else str(step)


def test_csv_rows_match_json(cli: Cli) -> None:
    document = cli_json(cli("optimizer", LIGHTNING_FILE, "--format", "json"))
    result = cli("optimizer", LIGHTNING_FILE, "--format", "csv")
    assert (result.exit_code, result.stderr) == (0, "")
    header, *rows = csv.reader(io.StringIO(result.stdout))
    assert header == CSV_HEADER
    expected = [
        [r["path"], r["type"], str(s["index"]), s["name"] or "", step_text(s["step"]), state_text(s["tensors"])]
        for r in document["optimizers"]
        for s in r["state"]
    ]
    assert rows == expected
    assert rows[0][:4] == ["optimizer_states.0", "Adam", "0", "model.conv1.weight"]


def test_file_without_optimizer_state(cli: Cli) -> None:
    path = COMMITTED_DIR / "cnn_state_dict.pth"
    result = cli("optimizer", path)
    assert (result.exit_code, result.stdout.strip(), result.stderr) == (0, "no optimizer state in this file", "")
    assert cli_json(cli("optimizer", path, "--format", "json"))["optimizers"] == []


def test_model_arg_reaches_the_model(cli: Cli) -> None:
    """A 5-class CNN does not fit a 10-class optimizer state: names stay unresolved, and a
    note says which parameter disagrees."""
    result = cli("optimizer", ADAM_FILE, "--model", CNN_SPEC, "--model-arg", "num_classes=5", "--format", "json")
    assert result.exit_code == 0
    (report,) = cli_json(result)["optimizers"]
    assert report["names"] is None
    assert all(row["name"] is None for row in report["state"])
    assert any("fc1.weight" in note for note in report["notes"])


def test_relative_model_file_spec(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spec form the docs show, relative to the working directory."""
    monkeypatch.chdir(FIXTURES_DIR.parent)
    result = cli("optimizer", ADAM_FILE, "--model", "fixtures/tutorial_models.py:CNN", "--format", "json")
    assert result.exit_code == 0
    (report,) = cli_json(result)["optimizers"]
    assert report["names"] == "model"


# -- errors ---------------------------------------------------------------------------------------


def test_unreadable_file_exits_2(cli: Cli, tmp_path: Path) -> None:
    assert_one_error_line(cli("optimizer", tmp_path / "gone.pt"), "gone.pt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    result = cli("optimizer", junk, "--format", "json")
    assert result.exit_code == 2
    assert assert_json_error(result)["path"] == str(junk)


@pytest.mark.parametrize(
    ("spec", "args", "named"),
    [
        ("no_such_package.models:Net", (), "no_such_package"),
        (f"{FIXTURES_DIR / 'tutorial_models.py'}:Missing", (), "Missing"),
        ("fixtures/absent.py:Net", (), "absent.py"),
        ("tutorial_models", (), "tutorial_models"),
        (CNN_SPEC, ("--model-arg", "no-equals-sign"), "no-equals-sign"),
        (CNN_SPEC, ("--model-arg", "depth=3"), "depth"),
        ("torch.nn:Identity.__doc__", (), "Identity"),
    ],
    ids=["no-module", "no-name", "no-file", "no-colon", "bad-arg", "unknown-arg", "not-callable"],
)
def test_unusable_model_spec_exits_2(cli: Cli, spec: str, args: tuple[str, ...], named: str) -> None:
    assert_one_error_line(cli("optimizer", ADAM_FILE, "--model", spec, *args), named)


def test_spec_returning_something_else_exits_2(cli: Cli, tmp_path: Path) -> None:
    factory = tmp_path / "factories.py"
    factory.write_text("def make():\n    return {'not': 'a module'}\n")
    assert_one_error_line(cli("optimizer", ADAM_FILE, "--model", f"{factory}:make"), "make")


def test_help(cli: Cli) -> None:
    result = cli("optimizer", "--help")
    assert result.exit_code == 0
    for option in ("--model", "--model-arg", "--format"):
        assert option in result.stdout


def test_step_counters_of_a_gpu_run_are_read(cli: Cli) -> None:
    """Adam's step counters stay on cpu while the moments sit on cuda:0: every step is read."""
    path = COMMITTED_DIR / "cnn_model_optimizer_cuda0.pt"
    truth = torch_load_trusted(path)["optimizer"]["state"]
    (report,) = cli_json(cli("optimizer", path, "--format", "json"))["optimizers"]
    assert [row["step"] for row in report["state"]] == [float(s["step"]) for s in truth.values()]
    assert all(isinstance(s["step"], torch.Tensor) for s in truth.values())


def test_hyper_parameters_are_rows_and_groups_fit_the_width(tmp_path: Path) -> None:
    """Three param groups that differ in lr: one column each; at 40 columns the groups that
    do not fit are counted rather than cut."""
    from click.testing import CliRunner

    from ckpttool.cli import main

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    groups = [{"params": list(m.parameters()), "lr": lr} for m, lr in zip(model, (0.1, 0.01, 0.001), strict=True)]
    optimizer = torch.optim.SGD(groups, momentum=0.9)
    path = tmp_path / "groups.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    truth = optimizer.state_dict()["param_groups"]

    def run(columns: str) -> list[list[str]]:
        result = CliRunner().invoke(main, ["optimizer", str(path)], env={"COLUMNS": columns})
        assert (result.exit_code, result.stderr) == (0, "")
        return blocks(result.stdout)

    head, groups, *_ = run("120")
    assert key_values(head)["param groups"] == "3"
    rows = {row["hyper-parameter"]: row for row in table(groups)}
    assert [rows["lr"][f"group {i}"] for i in range(3)] == [str(g["lr"]) for g in truth]
    assert [rows["params"][f"group {i}"] for i in range(3)] == [str(len(g["params"])) for g in truth]
    assert set(rows) == {"params", *(k for k in truth[0] if k != "params")}
    _, narrow, *_ = run("40")
    *table_lines, note = narrow
    assert all(len(line) <= 40 for line in narrow)
    shown = [c for c in table_lines[0].split() if c.isdigit()]
    assert 0 < len(shown) < 3
    assert note == f"({3 - len(shown)} more {'group' if 3 - len(shown) == 1 else 'groups'} not shown)"
