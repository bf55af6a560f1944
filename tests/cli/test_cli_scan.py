"""`ckpttool scan`: every fixture's verdict and weights_only answer checked against torch.

`weights_only` must say what `torch.load(weights_only=True)` really does with the file:
`loads` exactly when torch accepts it as is; `loads-after-allowlist` when it refuses it
as is and accepts it once the globals of the printed `add_safe_globals` line are
allowlisted (the fixtures' model classes supplied from tutorial_models under the names
the file uses); `refused` when no allowlist of those globals is enough. The verdict is
about danger only: none of the fixtures is `dangerous`; the TorchScript archives are
`unknown-call` (torch.jit.load runs their code) until their top-level class is allowed.
"""

from __future__ import annotations

import builtins
import csv
import importlib
import io
import json
import pickle
import pickletools
import re
import warnings
import zipfile
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
    "error",
}
GLOBAL_FIELDS = {"module", "name", "uses", "verdict", "reason", "calls", "allowed_by"}
VERDICTS = {"safe", "needs-allowlist", "unknown-call", "dangerous"}
WEIGHTS_ONLY = {"loads", "loads-after-allowlist", "refused", "not-applicable"}
CSV_HEADER = ["path", "format", "verdict", "weights_only", "global", "uses", "global_verdict", "error"]
# torch's wording when the only obstacle is a global missing from its allowlist.
UNSUPPORTED_GLOBAL = "Unsupported global"
# Homes the fixtures' classes were pickled under; tutorial_models supplies them.
RELOCATED_MODULES = ("__main__", "models")
# One entry of an add_safe_globals line: `(object, "pickled.name")` or a (dotted) name.
LINE_ENTRY = re.compile(r'\(([\w.]+), "([\w.]+)"\)|([\w.]+)')
IMPORT_LINE = re.compile(r"from ([\w.]+) import (.+)")


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


def imported_names(imports: list[str]) -> dict[str, tuple[str, str]]:
    """{local name: (module, name)} of the printed `from MODULE import A, B as C` lines."""
    found = {}
    for statement in imports:
        match = IMPORT_LINE.fullmatch(statement)
        assert match, statement
        for entry in match.group(2).split(", "):
            name, _, local = entry.partition(" as ")
            found[local or name] = (match.group(1), name)
    return found


def allowlist_entries(line: str) -> str:
    match = re.fullmatch(r"torch\.serialization\.add_safe_globals\(\[(.*)\]\)", line)
    assert match, line
    return match.group(1)


def supply_line(line: str, imports: list[str]) -> list[Any]:
    """What a user of these fixtures passes for the printed lines: the imported names,
    with the relocated fixture classes taken from tutorial_models; bare names are builtins
    or the script's own classes (`__main__`)."""
    names = imported_names(imports)
    allow = []
    for aliased, pickled, plain in LINE_ENTRY.findall(allowlist_entries(line)):
        if aliased:
            module, name = names[aliased]
            allow.append((getattr(importlib.import_module(module), name), pickled))
        elif plain in names:
            allow.append(supply(*names[plain]))
        else:
            allow.append(getattr(builtins, plain) if hasattr(builtins, plain) else supply("__main__", plain))
    return allow


def rewrite_record(src: Path, dst: Path, record: str, change: Callable[[bytes], bytes]) -> None:
    """A copy of the zip `src` whose `<root>/record` holds `change(its bytes)`."""
    with zipfile.ZipFile(src) as source, zipfile.ZipFile(dst, "w") as target:
        found = False
        for info in source.infolist():
            data = source.read(info)
            if info.filename.split("/", 1)[-1] == record:
                data, found = change(data), True
            target.writestr(info.filename, data)
    assert found, record


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
        assert torch_weights_only(fixture(name), supply_line(scanned["allowlist"], scanned["imports"])) is None
    elif said == "refused":
        assert scanned["weights_only"]["reasons"]
        allow = supply_line(scanned["allowlist"], scanned["imports"]) if scanned["allowlist"] else []
        assert torch_weights_only(fixture(name), allow) is not None


@pytest.mark.parametrize("name", [pytest.param(r["name"], id=r["name"]) for r in INDEX])
def test_no_fixture_is_dangerous(cli: Cli, name: str) -> None:
    """Every fixture is a real way of saving: none is dangerous; only TorchScript (whose
    code torch.jit.load compiles and runs) is an unknown call, nothing else calls an
    unvetted callable."""
    scanned = only_file(scan_json(cli, fixture(name))[1])
    expected = {"unknown-call"} if scanned["format"] == "torchscript" else {"safe", "needs-allowlist"}
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
    imported = imported_names(scanned["imports"])
    shown = [
        tuple(pickled.rsplit(".", 1)) if pickled else imported.get(plain, ("__main__", plain))
        for _, pickled, plain in LINE_ENTRY.findall(allowlist_entries(scanned["allowlist"]))
    ]
    expected = [(g["module"], g["name"]) for g in listed]
    # The script's own classes and builtins are used bare; every other name is imported.
    assert sorted(shown) == sorted((m if m != "builtins" else "__main__", n) for m, n in expected)
    assert {module for module, _ in imported.values()} == {m for m, _ in expected if m not in ("__main__", "builtins")}
    # The refused global torch named is one of them.
    refused = re.search(r"GLOBAL (\S+) was not an allowed global", torch_refusal(name) or "")
    assert refused and refused.group(1) in {f"{g['module']}.{g['name']}" for g in listed}


@pytest.mark.parametrize("name", [pytest.param(r["name"], id=r["name"]) for r in INDEX])
def test_json_has_the_documented_shape(cli: Cli, name: str) -> None:
    report = scan_json(cli, fixture(name))[1]
    assert report["schema_version"] == 2
    scanned = only_file(report)
    assert scanned["error"] is None
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
    assert [f["verdict"] for f in report["files"]] == ["safe", "needs-allowlist", "unknown-call"]
    assert result.exit_code == 1  # one of them runs unvetted code
    assert result.stderr == ""


def test_several_clean_paths_exit_zero(cli: Cli) -> None:
    result = cli("scan", fixture("cnn_state_dict"), fixture("cnn_whole_model_main"))
    assert (result.exit_code, result.stderr) == (0, "")
    assert cli("scan", fixture("cnn_state_dict"), fixture("cnn_whole_model_main"), "--strict").exit_code == 1


def test_one_unreadable_path_among_several(cli: Cli, tmp_path: Path) -> None:
    """As in check: every path is an entry of files[], in order; exit 1, not 2, once any was read."""
    missing = tmp_path / "missing.pt"
    good = [fixture("cnn_state_dict"), fixture("cnn_whole_model_main")]
    result = cli("scan", good[0], missing, good[1], "--format", "json")
    assert result.exit_code == 1
    document = cli_json(result)
    assert "error" not in document
    files = document["files"]
    assert [f["path"] for f in files] == [str(good[0]), str(missing), str(good[1])]
    assert [f["verdict"] for f in files] == ["safe", "unreadable", "needs-allowlist"]
    assert files[1]["error"] == "no such file" and files[1]["globals"] == [] and files[1]["weights_only"] is None
    assert SCAN_FILE_FIELDS <= set(files[1])
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0] == f"ckpttool: error: {missing}: no such file", result.stderr


def truncated(tmp_path: Path) -> Path:
    """The first half of a real torch.save file: torch.load refuses it too."""
    data = fixture("cnn_state_dict").read_bytes()
    path = tmp_path / "trunc.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises, it cannot read the file
        torch.load(path, weights_only=True)
    return path


def test_only_path_unreadable_is_json_on_stdout(cli: Cli, tmp_path: Path) -> None:
    """--format json answers on stdout, an unreadable file too: its entry and the error object."""
    trunc = truncated(tmp_path)
    result = cli("scan", trunc, "--format", "json")
    assert result.exit_code == 2
    document = cli_json(result)
    (entry,) = document["files"]
    assert (entry["path"], entry["verdict"], entry["format"]) == (str(trunc), "unreadable", None)
    assert document["error"] == {"path": str(trunc), "message": entry["error"], "exit_code": 2}
    assert result.stderr == f"ckpttool: error: {trunc}: {entry['error']}\n"


def test_a_dangerous_file_is_never_hidden_by_an_unreadable_one(cli: Cli, tmp_path: Path) -> None:
    trunc, evil = truncated(tmp_path), tmp_path / "evil.pkl"
    evil.write_bytes(b"\x80\x02cos\nsystem\n.")
    for fmt in ("json", "csv", "table", "sarif"):
        result = cli("scan", trunc, evil, "--format", fmt)
        assert result.exit_code == 1, fmt
        assert "dangerous" in result.stdout.lower() and str(trunc) in result.stdout, fmt
    rows = list(csv.reader(io.StringIO(cli("scan", trunc, evil, "--format", "csv").stdout)))
    assert [r[:3] for r in rows[1:]] == [[str(trunc), "", "unreadable"], [str(evil), "raw-pickle", "dangerous"]]
    assert rows[1][-1] and rows[2][-1] == ""


def test_one_unreadable_path_in_the_table(cli: Cli, tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    result = cli("scan", fixture("cnn_state_dict"), text)
    assert result.exit_code == 1
    assert re.search(rf"^file:\s+{re.escape(str(fixture('cnn_state_dict')))}$", result.stdout, re.M)
    assert re.search(rf"^file:\s+{re.escape(str(text))}\nverdict:\s+UNREADABLE\nerror:\s+\S", result.stdout, re.M)
    assert re.search(rf"^{re.escape(str(text))}\s+unreadable\s*$", result.stdout, re.M)  # the summary row
    assert result.stderr.count("\n") == 1 and str(text) in result.stderr


def test_missing_only_path_is_one_error_line(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    result = cli("scan", missing)
    assert result.exit_code == 2
    assert result.stderr == f"ckpttool: error: {missing}: no such file\n"
    assert "UNREADABLE" in result.stdout


def test_no_path_readable_is_exit_2_and_one_line(cli: Cli, tmp_path: Path) -> None:
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    result = cli("scan", *paths, "--format", "json")
    assert result.exit_code == 2
    assert [f["verdict"] for f in cli_json(result)["files"]] == ["unreadable", "unreadable"]
    assert cli_json(result)["error"]["path"] is None
    assert result.stderr.count("\n") == 1 and "none of the 2 paths could be read" in result.stderr


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
    for statement in scanned["imports"]:
        assert re.search(rf"^\s+{re.escape(statement)}$", out, re.M)


def test_table_of_several_files_ends_with_a_summary(cli: Cli) -> None:
    names = ["cnn_state_dict", "torchscript_scripted"]
    out = cli("scan", *(fixture(n) for n in names)).stdout
    assert re.search(r"^file\s+format\s+verdict\s+weights_only\s+pickles$", out, re.M)
    summary_row = table_row(fixture("torchscript_scripted"), "torchscript", "unknown-call", "refused")
    assert re.search(summary_row, out, re.M)


def test_table_shows_problems_of_a_dangerous_file(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "trailing.pth"
    rewrite_record(fixture("cnn_state_dict"), path, "data.pkl", lambda data: data + b"junk")
    out = cli("scan", path).stdout
    assert re.search(r"^verdict:\s+DANGEROUS$", out, re.M)
    assert re.search(r"^problem: \S+/data\.pkl: .*after", out, re.M), out


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
            "",
        ]
        for g in scanned["globals"]
    ]
    assert rows[1:] == expected


def test_csv_row_for_a_file_without_globals(cli: Cli) -> None:
    path = fixture("safetensors")
    rows = list(csv.reader(io.StringIO(cli("scan", path, "--format", "csv").stdout)))
    assert rows == [CSV_HEADER, [str(path), "safetensors", "safe", "not-applicable", "", "", "", ""]]


# -- TorchScript: unknown-call until the archive's top-level class is allowed ------------------------

TORCHSCRIPT = ["torchscript_scripted", "torchscript_traced"]


@cache
def script_classes(name: str) -> tuple[str, list[str]]:
    """torch.jit.load's own answer: the top-level class and every class of the module tree."""
    module = gt.load_torchscript(fixture(name))
    return module._c._type().qualified_name(), sorted({m._c._type().qualified_name() for m in module.modules()})


def torchscript_globals(scanned: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{g['module']}.{g['name']}": g for g in scanned["globals"] if g["module"].startswith("__torch__")}


@pytest.mark.parametrize("name", TORCHSCRIPT)
def test_torchscript_is_an_unknown_call_naming_its_classes(cli: Cli, name: str) -> None:
    result, report = scan_json(cli, fixture(name))
    scanned = only_file(report)
    top, classes = script_classes(name)
    assert (result.exit_code, scanned["verdict"], scanned["problems"]) == (1, "unknown-call", [])
    found = torchscript_globals(scanned)
    assert sorted(found) == classes
    for qualname, g in found.items():
        assert g["verdict"] == "unknown-call"
        assert "CVE-2025-32434" in g["reason"] and f"--allow {top}" in g["reason"]
        assert g["calls"] and f"the TorchScript code of {qualname}" in g["calls"][0]
    # The builders are vetted now; nothing in the archive is a known gadget.
    assert all(g["verdict"] != "dangerous" for g in scanned["globals"])
    assert {g["verdict"] for g in scanned["globals"] if g["module"] == "torch.jit._pickle"} <= {"needs-allowlist"}
    # weights_only: refused, and no add_safe_globals line (none would help).
    assert scanned["weights_only"]["result"] == "refused"
    assert scanned["weights_only"]["reasons"][0] == "a TorchScript archive, which torch.load(weights_only=True) refuses"
    assert scanned["allowlist"] is None


@pytest.mark.parametrize("name", TORCHSCRIPT)
def test_torchscript_table_gives_one_allow_hint(cli: Cli, name: str) -> None:
    top, classes = script_classes(name)
    out = cli("scan", fixture(name)).stdout
    assert re.search(r"^verdict:\s+UNKNOWN-CALL$", out, re.M)
    assert re.findall(r"^  to allow it: --allow (\S+),", out, re.M) == [top]
    shown = re.findall(r"^unknown call: the TorchScript code of (\S+)", out, re.M)
    assert shown[0] == top and sorted(shown) == classes
    assert "problem:" not in out and "add_safe_globals" not in out


@pytest.mark.parametrize("name", TORCHSCRIPT)
def test_allowing_the_top_level_class_trusts_the_archive(cli: Cli, name: str) -> None:
    top, classes = script_classes(name)
    result = cli("scan", fixture(name), "--allow", top, "--format", "json")
    scanned = only_file(cli_json(result))
    assert (result.exit_code, scanned["verdict"]) == (0, "needs-allowlist")
    assert scanned["allowed"] == {top: "--allow"}
    verdicts = {q: g["verdict"] for q, g in torchscript_globals(scanned).items()}
    assert verdicts == dict.fromkeys(classes, "needs-allowlist")
    assert scanned["weights_only"]["result"] == "refused"
    assert cli("scan", fixture(name), "--allow", top, "--strict").exit_code == 1


def test_allowing_an_inner_class_does_not_trust_the_archive(cli: Cli) -> None:
    top, classes = script_classes("torchscript_scripted")
    inner = next(c for c in classes if c != top)
    result, report = scan_json(cli, fixture("torchscript_scripted"), "--allow", inner)
    scanned = only_file(report)
    assert (result.exit_code, scanned["verdict"]) == (1, "unknown-call")
    found = torchscript_globals(scanned)
    assert found[inner]["verdict"] == "needs-allowlist" and found[top]["verdict"] == "unknown-call"


def test_torchscript_allowed_in_pyproject(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top, _ = script_classes("torchscript_traced")
    (tmp_path / "pyproject.toml").write_text(f'[tool.ckpttool]\nallow = ["{top}"]\n')
    monkeypatch.chdir(tmp_path)
    result, report = scan_json(cli, fixture("torchscript_traced"))
    scanned = only_file(report)
    assert (result.exit_code, scanned["verdict"]) == (0, "needs-allowlist")
    assert scanned["allowed"] == {top: str(tmp_path / "pyproject.toml")}
    assert cli("check", fixture("torchscript_traced")).exit_code == 0


def reduce_os_system(protocol_2_pickle: bytes) -> bytes:
    """The same pickle with `os.system('true')` called (and popped) before anything else."""
    assert protocol_2_pickle.startswith(b"\x80\x02")
    payload = b"cos\nsystem\n(X\x04\x00\x00\x00truetR0"
    injected = protocol_2_pickle[:2] + payload + protocol_2_pickle[2:]
    called = [arg for op, arg, _ in pickletools.genops(injected) if op.name == "GLOBAL"]
    assert called[0] == "os system"  # CPython's reading of the bytes: os.system is called first
    return injected


@pytest.mark.parametrize("record", ["data.pkl", "constants.pkl"])
@pytest.mark.parametrize("name", TORCHSCRIPT)
def test_torchscript_with_a_gadget_is_dangerous_even_when_allowed(
    cli: Cli, name: str, record: str, tmp_path: Path
) -> None:
    top, _ = script_classes(name)
    path = tmp_path / f"{name}.pt"
    rewrite_record(fixture(name), path, record, reduce_os_system)
    for extra in ([], ["--allow", top]):
        result, report = scan_json(cli, path, *extra)
        scanned = only_file(report)
        assert (result.exit_code, scanned["verdict"]) == (1, "dangerous")
        (system,) = [g for g in scanned["globals"] if g["module"] == "os"]
        assert (system["name"], system["verdict"]) == ("system", "dangerous")
    checked = cli("check", path, "--allow", top)
    assert checked.exit_code == 1 and "dangerous" in checked.stdout


@pytest.mark.parametrize("name", TORCHSCRIPT)
def test_check_reports_the_torchscript_code_and_how_to_allow_it(cli: Cli, name: str) -> None:
    top, _ = script_classes(name)
    result = cli("check", fixture(name), "--format", "json")
    assert result.exit_code == 1
    (checked,) = cli_json(result)["files"]
    (finding,) = [f for f in checked["findings"] if f["check"] == "safety"]
    assert finding["severity"] == "error"
    assert finding["message"].startswith(f"calls the TorchScript code of {top} ")
    assert finding["message"].endswith(f"if you trust it, --allow {top}")
    assert cli("check", fixture(name), "--allow", top).exit_code == 0


@pytest.mark.parametrize("name", TORCHSCRIPT)
def test_inspect_calls_torchscript_dangerous_only_with_a_gadget(cli: Cli, name: str, tmp_path: Path) -> None:
    result = cli("inspect", fixture(name), "--format", "json")
    assert result.exit_code == 0
    assert not any("DANGEROUS" in note for note in cli_json(result)["notes"])
    assert "DANGEROUS" not in cli("inspect", fixture(name)).stdout
    hostile = tmp_path / f"{name}.pt"
    rewrite_record(fixture(name), hostile, "constants.pkl", reduce_os_system)
    notes = cli_json(cli("inspect", hostile, "--format", "json"))["notes"]
    assert any(note.startswith("DANGEROUS: ") and "os.system" in note for note in notes), notes


def test_torchscript_inside_a_plain_zip_is_still_its_code(cli: Cli, tmp_path: Path) -> None:
    """Downloaded as a zip, the archive's classes still name code: no archive to trust,
    so each class is allowed by its own name only."""
    top, classes = script_classes("torchscript_scripted")
    path = tmp_path / "download.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(fixture("torchscript_scripted"), "model/cnn_scripted.pt")
    result, report = scan_json(cli, path)
    scanned = only_file(report)
    assert (result.exit_code, scanned["verdict"]) == (1, "unknown-call")
    assert sorted(torchscript_globals(scanned)) == classes
    assert only_file(scan_json(cli, path, "--allow", top)[1])["verdict"] == "unknown-call"
    allowed = [arg for name in classes for arg in ("--allow", name)]
    assert scan_json(cli, path, *allowed)[0].exit_code == 0
