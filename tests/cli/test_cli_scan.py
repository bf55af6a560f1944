"""`ckpttool scan`: every fixture's verdict and weights_only answer checked against torch.

`weights_only` must say what `torch.load(weights_only=True)` really does with the file:
`loads` exactly when torch accepts it as is; `loads-after-allowlist` when it refuses it
as is and accepts it once the globals of the printed `add_safe_globals` line are
allowlisted (the fixtures' model classes supplied from tutorial_models under the names
the file uses); `refused` when no allowlist of those globals is enough. The verdict is
about danger only: none of the fixtures is `dangerous` but the TorchScript archives.
"""

from __future__ import annotations

import builtins
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
    "weights_only",
    "pickles",
    "globals",
    "allowlist",
    "imports",
    "problems",
    "allowed",
}
GLOBAL_FIELDS = {"module", "name", "uses", "verdict", "reason", "calls", "allowed_by"}
VERDICTS = {"safe", "needs-allowlist", "unknown-call", "dangerous"}
WEIGHTS_ONLY = {"loads", "loads-after-allowlist", "refused", "not-applicable"}
CSV_HEADER = ["path", "format", "verdict", "weights_only", "global", "uses", "global_verdict"]
# torch's wording when the only obstacle is a global missing from its allowlist.
UNSUPPORTED_GLOBAL = "Unsupported global"
# Homes the fixtures' classes were pickled under; tutorial_models supplies them.
RELOCATED_MODULES = ("__main__", "models")
# One entry of an add_safe_globals line: `(object, "pickled.name")` or a (dotted) name.
LINE_ENTRY = re.compile(r'\(([\w.]+), "([\w.]+)"\)|([\w.]+)')


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
            warnings.filterwarnings("ignore", message="numpy.core is deprecated", category=DeprecationWarning)
            for file in files_torch_loads(path):
                torch.load(file, weights_only=True, map_location="cpu")  # noqa: TID251 - the ground truth
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        return str(exc) or type(exc).__name__
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


def supply_line(line: str) -> list[Any]:
    """What a user of these fixtures passes for the printed add_safe_globals line: its
    bare names are builtins or the script's own classes (`__main__`)."""
    match = re.fullmatch(r"torch\.serialization\.add_safe_globals\(\[(.*)\]\)", line)
    assert match, line
    allow = []
    for aliased, pickled, plain in LINE_ENTRY.findall(match.group(1)):
        if aliased:
            module, _, name = aliased.rpartition(".")
            allow.append((getattr(importlib.import_module(module), name), pickled))
        elif "." not in plain:
            allow.append(getattr(builtins, plain) if hasattr(builtins, plain) else supply("__main__", plain))
        else:
            module, _, name = plain.rpartition(".")
            allow.append(supply(module, name))
    return allow


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


# -- weights_only and the verdict against torch -------------------------------------------------


@pytest.mark.parametrize("name", [pytest.param(r["name"], id=r["name"]) for r in INDEX])
def test_weights_only_says_what_torch_does(cli: Cli, name: str) -> None:
    result, report = scan_json(cli, fixture(name))
    scanned = only_file(report)
    assert result.stderr == ""
    assert result.exit_code == (1 if scanned["verdict"] in ("dangerous", "unknown-call") else 0)
    said, refusal = scanned["weights_only"]["result"], torch_refusal(name)
    if said == "not-applicable":
        assert scanned["format"].endswith("safetensors")
        return
    assert (said == "loads") == (refusal is None), f"{said} {scanned['weights_only']['reasons']}; torch: {refusal}"
    if said == "loads-after-allowlist":
        assert torch_weights_only(fixture(name), supply_line(scanned["allowlist"])) is None
    elif said == "refused":
        assert scanned["weights_only"]["reasons"]
        allow = supply_line(scanned["allowlist"]) if scanned["allowlist"] else []
        assert torch_weights_only(fixture(name), allow) is not None


@pytest.mark.parametrize("name", [pytest.param(r["name"], id=r["name"]) for r in INDEX])
def test_no_fixture_is_dangerous_but_torchscript(cli: Cli, name: str) -> None:
    """Every fixture is a real way of saving: only TorchScript (whose code torch.jit.load
    compiles and runs) is dangerous, and nothing calls an unvetted callable."""
    scanned = only_file(scan_json(cli, fixture(name))[1])
    expected = {"dangerous"} if scanned["format"] == "torchscript" else {"safe", "needs-allowlist"}
    assert scanned["verdict"] in expected, (scanned["verdict"], scanned["problems"])


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("torchscript_scripted", "TorchScript"),
        ("torchscript_traced", "TorchScript"),
        ("legacy_tar_state_dict", "persistent id"),
        ("pickle_protocol_4", "opcode"),
        ("raw_pickle_bin", "not a file torch.save writes"),
    ],
)
def test_files_torch_refuses_outright_say_why(cli: Cli, name: str, reason: str) -> None:
    assert torch_refusal(name) is not None
    weights_only = only_file(scan_json(cli, fixture(name))[1])["weights_only"]
    assert weights_only["result"] == "refused"
    assert any(reason in r for r in weights_only["reasons"]), weights_only


def test_refused_opcodes_are_not_danger(cli: Cli) -> None:
    """A default-protocol pickle: torch's weights_only loader refuses its opcodes, and
    that is reported under weights_only, not as a problem."""
    scanned = only_file(scan_json(cli, fixture("pickle_protocol_4"))[1])
    assert (scanned["verdict"], scanned["problems"]) == ("safe", [])
    assert any(r.startswith("opcode ") for r in scanned["weights_only"]["reasons"])


@pytest.mark.parametrize("name", refused_over_globals())
def test_allowlist_line_names_every_global_to_allow(cli: Cli, name: str) -> None:
    scanned = only_file(scan_json(cli, fixture(name))[1])
    if scanned["verdict"] not in ("needs-allowlist", "unknown-call"):
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
    assert report["schema_version"] == 2
    scanned = only_file(report)
    # `notes` (facts that are no finding) come with the container scan.
    assert SCAN_FILE_FIELDS <= set(scanned) <= SCAN_FILE_FIELDS | {"notes"}
    assert scanned["path"] == str(fixture(name))
    assert scanned["verdict"] in VERDICTS
    assert set(scanned["weights_only"]) == {"result", "reasons"}
    assert scanned["weights_only"]["result"] in WEIGHTS_ONLY
    for g in scanned["globals"]:
        assert set(g) == GLOBAL_FIELDS
        assert g["verdict"] in VERDICTS and g["reason"]
        assert set(g["uses"]) <= {"call", "instantiate", "reference"} and g["uses"]
        assert bool(g["calls"]) == (g["verdict"] == "unknown-call")
    if scanned["verdict"] not in ("needs-allowlist", "unknown-call"):
        assert scanned["allowlist"] is None


def test_whole_model_globals_are_its_classes(cli: Cli) -> None:
    scanned = only_file(scan_json(cli, fixture("nn_whole_model_package"))[1])
    listed = {f"{g['module']}.{g['name']}": g for g in needs_allowlist(scanned)}
    assert set(listed) == {"models.net.NN", "torch.nn.modules.linear.Linear"}
    assert all(g["uses"] == ["instantiate"] for g in listed.values())
    assert scanned["verdict"] == "needs-allowlist"


def test_legacy_whole_model_has_the_verdict_of_the_zip_one(cli: Cli) -> None:
    """Pre-1.6 files name a whole model's classes through ('module', cls, source) ids:
    the same classes, the same verdict; torch's weights_only loader refuses those ids."""
    legacy = only_file(scan_json(cli, fixture("legacy_whole_model"))[1])
    zipped = only_file(scan_json(cli, fixture("batchnorm_whole_model"))[1])
    assert legacy["verdict"] == zipped["verdict"] == "needs-allowlist"
    assert legacy["problems"] == []
    # The same classes (the fixtures pickled the model class under different homes).
    assert {(g["name"], g["uses"][0]) for g in needs_allowlist(legacy)} == {
        (g["name"], g["uses"][0]) for g in needs_allowlist(zipped)
    }
    assert legacy["weights_only"]["result"] == "refused"
    assert any("is not a storage" in r for r in legacy["weights_only"]["reasons"])


# -- --strict and exit codes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "plain", "strict"),
    [
        ("cnn_state_dict", 0, 0),
        ("cnn_whole_model_main", 0, 1),
        ("lightning_checkpoint_namespace_hparams", 0, 1),
        ("torchscript_scripted", 1, 1),
        ("raw_pickle_bin", 0, 0),
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
    assert re.search(r"^file\s+format\s+verdict\s+weights_only\s+pickles$", out, re.M)
    summary_row = table_row(fixture("torchscript_scripted"), "torchscript", "dangerous", "refused")
    assert re.search(summary_row, out, re.M)


def test_table_shows_problems_of_a_dangerous_file(cli: Cli) -> None:
    out = cli("scan", fixture("torchscript_traced")).stdout
    assert re.search(r"^verdict:\s+DANGEROUS$", out, re.M)
    assert re.search(r"^problem: TorchScript archive", out, re.M)


def test_table_shows_why_weights_only_refuses(cli: Cli) -> None:
    out = cli("scan", fixture("pickle_protocol_4")).stdout
    assert re.search(r"^verdict:\s+SAFE$", out, re.M)
    assert re.search(r"^weights_only:\s+refused$", out, re.M)
    assert re.search(r"^  opcode \w+ \(pickle byte \d+\) is not supported$", out, re.M)
    assert "problem:" not in out


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
            "loads-after-allowlist",
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
    assert rows == [CSV_HEADER, [str(path), "safetensors", "safe", "not-applicable", "", "", ""]]
