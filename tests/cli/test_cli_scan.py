"""`ckpttool scan`: every fixture's verdict checked against torch's own weights_only loader.

A file is `safe` exactly when `torch.load(path, weights_only=True)` accepts it. When
scan says `needs-allowlist`, allowlisting the globals it names (the fixtures' model
classes supplied from tutorial_models under the names the file uses) must make that
load succeed; when it says `dangerous` for a file torch refused over its globals,
no allowlist of those globals may be enough.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import pickle
import re
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import groundtruth as gt
import pytest
import torch
from click.testing import Result
from conftest import cli_json

Cli = Callable[..., Result]
INDEX = gt.load_fixture_index()
SCAN_FILE_FIELDS = {
    "path",
    "format",
    "verdict",
    "pickles",
    "globals",
    "allowlist",
    "imports",
    "problems",
}
GLOBAL_FIELDS = {"module", "name", "uses", "verdict", "reason"}
VERDICTS = {"safe", "needs-allowlist", "dangerous"}
CSV_HEADER = ["path", "format", "verdict", "global", "uses", "global_verdict"]
# torch's wording when the only obstacle is a global missing from its allowlist.
UNSUPPORTED_GLOBAL = "Unsupported global"
# Homes the fixtures' classes were pickled under; tutorial_models supplies them.
RELOCATED_MODULES = ("__main__", "models")


def fixture(name: str) -> Path:
    return gt.fixture_path(gt.fixture_record(name))


def files_torch_loads(path: Path) -> list[Path]:
    """The files torch.load would be given: the file itself, or every shard of a folder."""
    if path.is_file():
        return [path]
    index = json.loads(next(path.glob("*.index.json")).read_text())
    return [path / shard for shard in dict.fromkeys(index["weight_map"].values())]


def torch_weights_only(path: Path, allow: list[Any] | None = None) -> str | None:
    """None when ``torch.load(weights_only=True)`` accepts every file, else torch's message."""
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(allow or []):
            # torch's notices on the way to its verdict, not the verdict itself.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.* are deprecated")
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            warnings.filterwarnings("ignore", message="'torch.load' received a zip file that looks like a TorchScript")
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            for file in files_torch_loads(path):
                torch.load(file, weights_only=True, map_location="cpu")  # noqa: TID251 - the ground truth
    except (pickle.UnpicklingError, RuntimeError) as exc:
        return str(exc)
    return None


@cache
def torch_refusal(name: str) -> str | None:
    return torch_weights_only(fixture(name))


def refused_over_globals() -> list[Any]:
    """Fixtures torch refuses only naming an unsupported global (an allowlist may help)."""
    return [
        pytest.param(r["name"], id=r["name"]) for r in INDEX if UNSUPPORTED_GLOBAL in (torch_refusal(r["name"]) or "")
    ]


def supply(module: str, name: str) -> Any:
    """The object to allowlist for ``module.name``: the relocated fixture classes come
    from tutorial_models, paired with the name the file uses; the rest are imported."""
    if module == "__main__" or module.split(".")[0] in RELOCATED_MODULES:
        return (getattr(gt.tutorial_models(), name), f"{module}.{name}")
    return getattr(importlib.import_module(module), name)


def table_row(*cells: object) -> str:
    """A regex for a table line that starts with these cells, in order."""
    return "^" + r"\s+".join(re.escape(str(c)) for c in cells) + r"(\s|$)"


def scan_json(cli: Cli, *paths: Path | str, strict: bool = False) -> tuple[Result, dict[str, Any]]:
    args = ["scan", *paths, "--format", "json"] + (["--strict"] if strict else [])
    result = cli(*args)
    return result, cli_json(result)


def only_file(report: dict[str, Any]) -> dict[str, Any]:
    (scanned,) = report["files"]
    assert isinstance(scanned, dict)
    return scanned


def needs_allowlist(scanned: dict[str, Any]) -> list[dict[str, Any]]:
    return [g for g in scanned["globals"] if g["verdict"] == "needs-allowlist"]


# -- the verdict against torch ----------------------------------------------------------


@pytest.mark.parametrize("name", [pytest.param(r["name"], id=r["name"]) for r in INDEX])
def test_safe_exactly_when_torch_weights_only_loads(cli: Cli, name: str) -> None:
    result, report = scan_json(cli, fixture(name))
    scanned = only_file(report)
    assert result.stderr == ""
    assert result.exit_code == (1 if scanned["verdict"] == "dangerous" else 0)
    refusal = torch_refusal(name)
    expected = "safe" if refusal is None else "not safe"
    got = "safe" if scanned["verdict"] == "safe" else "not safe"
    assert got == expected, f"scan: {scanned['verdict']} {scanned['problems']}; torch: {refusal}"


@pytest.mark.parametrize(
    "name",
    ["torchscript_scripted", "torchscript_traced", "legacy_tar_state_dict", "pickle_protocol_4"],
)
def test_files_torch_refuses_outright_are_not_safe(cli: Cli, name: str) -> None:
    assert torch_refusal(name) is not None
    assert only_file(scan_json(cli, fixture(name))[1])["verdict"] != "safe"


@pytest.mark.parametrize("name", refused_over_globals())
def test_allowlist_lets_torch_load_what_needs_it(cli: Cli, name: str) -> None:
    scanned = only_file(scan_json(cli, fixture(name))[1])
    listed = needs_allowlist(scanned)
    allow = [supply(g["module"], g["name"]) for g in listed]
    if scanned["verdict"] == "needs-allowlist":
        assert torch_weights_only(fixture(name), allow) is None
    else:
        # Refused over a global yet judged dangerous: no allowlist may be enough.
        assert scanned["verdict"] == "dangerous"
        assert torch_weights_only(fixture(name), allow) is not None


@pytest.mark.parametrize("name", refused_over_globals())
def test_allowlist_line_names_every_global_to_allow(cli: Cli, name: str) -> None:
    scanned = only_file(scan_json(cli, fixture(name))[1])
    if scanned["verdict"] != "needs-allowlist":
        assert scanned["allowlist"] is None
        return
    listed = needs_allowlist(scanned)
    assert listed
    names = [g["name"] if g["module"] in ("__main__", "builtins") else f"{g['module']}.{g['name']}" for g in listed]
    match = re.fullmatch(r"torch\.serialization\.add_safe_globals\(\[(.*)\]\)", scanned["allowlist"])
    assert match, scanned["allowlist"]
    assert sorted(match.group(1).split(", ")) == sorted(names)
    assert set(scanned["imports"]) == {g["module"] for g in listed if g["module"] not in ("__main__", "builtins")}
    # The refused global torch named is one of them.
    refused = re.search(r"GLOBAL (\S+) was not an allowed global", torch_refusal(name) or "")
    assert refused and refused.group(1) in {f"{g['module']}.{g['name']}" for g in listed}


@pytest.mark.parametrize("name", [pytest.param(r["name"], id=r["name"]) for r in INDEX])
def test_json_has_the_documented_shape(cli: Cli, name: str) -> None:
    report = scan_json(cli, fixture(name))[1]
    assert report["schema_version"] == 1
    scanned = only_file(report)
    assert set(scanned) == SCAN_FILE_FIELDS
    assert scanned["path"] == str(fixture(name))
    assert scanned["verdict"] in VERDICTS
    for g in scanned["globals"]:
        assert set(g) == GLOBAL_FIELDS
        assert g["verdict"] in VERDICTS and g["reason"]
        assert set(g["uses"]) <= {"call", "instantiate", "reference"} and g["uses"]
    if scanned["verdict"] != "needs-allowlist":
        assert scanned["allowlist"] is None


def test_whole_model_globals_are_its_classes(cli: Cli) -> None:
    scanned = only_file(scan_json(cli, fixture("nn_whole_model_package"))[1])
    listed = {f"{g['module']}.{g['name']}": g for g in needs_allowlist(scanned)}
    assert set(listed) == {"models.net.NN", "torch.nn.modules.linear.Linear"}
    assert all(g["uses"] == ["instantiate"] for g in listed.values())
    assert scanned["verdict"] == "needs-allowlist"


# -- --strict and exit codes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "plain", "strict"),
    [
        ("cnn_state_dict", 0, 0),
        ("cnn_whole_model_main", 0, 1),
        ("lightning_checkpoint_namespace_hparams", 0, 1),
        ("torchscript_scripted", 1, 1),
        ("raw_pickle_bin", 1, 1),
    ],
)
def test_strict_also_fails_on_needs_allowlist(cli: Cli, name: str, plain: int, strict: int) -> None:
    assert cli("scan", fixture(name)).exit_code == plain
    assert cli("scan", fixture(name), "--strict").exit_code == strict


# -- several paths ------------------------------------------------------------------------------


def test_several_paths_are_reported_in_order(cli: Cli) -> None:
    names = ["cnn_state_dict", "cnn_whole_model_main", "torchscript_traced"]
    result, report = scan_json(cli, *(fixture(n) for n in names))
    assert [f["path"] for f in report["files"]] == [str(fixture(n)) for n in names]
    assert [f["verdict"] for f in report["files"]] == ["safe", "needs-allowlist", "dangerous"]
    assert result.exit_code == 1  # one of them is dangerous
    assert result.stderr == ""


def test_several_clean_paths_exit_zero(cli: Cli) -> None:
    result = cli("scan", fixture("cnn_state_dict"), fixture("cnn_whole_model_main"))
    assert (result.exit_code, result.stderr) == (0, "")
    assert cli("scan", fixture("cnn_state_dict"), fixture("cnn_whole_model_main"), "--strict").exit_code == 1


def test_one_unreadable_path_among_several(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    good = [fixture("cnn_state_dict"), fixture("cnn_whole_model_main")]
    result = cli("scan", good[0], missing, good[1], "--format", "json")
    assert result.exit_code == 2
    assert [f["path"] for f in cli_json(result)["files"]] == [str(p) for p in good]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ckpttool: error: {missing}: "), result.stderr
    assert "Traceback" not in result.stderr


def test_one_unreadable_path_in_the_table(cli: Cli, tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    result = cli("scan", fixture("cnn_state_dict"), text)
    assert result.exit_code == 2
    assert re.search(rf"^file:\s+{re.escape(str(fixture('cnn_state_dict')))}$", result.stdout, re.M)
    assert result.stderr.count("\n") == 1 and str(text) in result.stderr


def test_missing_only_path_is_one_error_line(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    result = cli("scan", missing)
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"ckpttool: error: {missing}: no such file\n"


# -- table and CSV ----------------------------------------------------------------------------


def test_table_lists_globals_and_the_allowlist_line(cli: Cli) -> None:
    path = fixture("cnn_whole_model_main")
    result = cli("scan", path)
    assert (result.exit_code, result.stderr) == (0, "")
    out = result.stdout
    scanned = only_file(scan_json(cli, path)[1])
    assert re.search(r"^verdict:\s+NEEDS-ALLOWLIST$", out, re.M)
    for g in scanned["globals"]:
        row = table_row(f"{g['module']}.{g['name']}", ", ".join(g["uses"]), g["verdict"])
        assert re.search(row, out, re.M), g
    assert "to load with torch.load(weights_only=True):" in out
    assert re.search(rf"^\s+{re.escape(scanned['allowlist'])}$", out, re.M)
    for module in scanned["imports"]:
        assert re.search(rf"^\s+import {re.escape(module)}$", out, re.M)


def test_table_of_several_files_ends_with_a_summary(cli: Cli) -> None:
    names = ["cnn_state_dict", "torchscript_scripted"]
    out = cli("scan", *(fixture(n) for n in names)).stdout
    assert re.search(r"^file\s+format\s+verdict\s+pickles$", out, re.M)
    summary_row = table_row(fixture("torchscript_scripted"), "torchscript", "dangerous")
    assert re.search(summary_row, out, re.M)


def test_table_shows_problems_of_a_dangerous_file(cli: Cli) -> None:
    out = cli("scan", fixture("pickle_protocol_4")).stdout
    assert re.search(r"^verdict:\s+DANGEROUS$", out, re.M)
    assert re.search(r"^problem: opcode STACK_GLOBAL", out, re.M)


def test_csv_has_a_row_per_global(cli: Cli) -> None:
    path = fixture("nn_whole_model_package")
    result = cli("scan", path, "--format", "csv")
    assert (result.exit_code, result.stderr) == (0, "")
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == CSV_HEADER
    scanned = only_file(scan_json(cli, path)[1])
    expected = [
        [
            str(path),
            "torch-zip",
            "needs-allowlist",
            f"{g['module']}.{g['name']}",
            " ".join(g["uses"]),
            g["verdict"],
        ]
        for g in scanned["globals"]
    ]
    assert rows[1:] == expected


def test_csv_row_for_a_file_without_globals(cli: Cli) -> None:
    path = fixture("safetensors")
    rows = list(csv.reader(io.StringIO(cli("scan", path, "--format", "csv").stdout)))
    assert rows == [CSV_HEADER, [str(path), "safetensors", "safe", "", "", ""]]
