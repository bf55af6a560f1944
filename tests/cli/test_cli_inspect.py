"""`ckpttool inspect`: table, JSON and CSV output, the options, entries and errors.

Expected values come from torch loading the same fixture (trusted, in the test
only): state_dict keys, shapes, dtypes, the saved `loss`, hyper-parameters and
the module tree. Exit code, stdout and stderr are checked apart.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from support import groundtruth as gt
from support.cli import assert_json_error, assert_one_error_line, cli_json
from support.groundtruth import fixture
from support.layouts import dtype_name, tensors_in
from torch import nn

Cli = Callable[..., Result]
INDEX = gt.load_fixture_index()
TOP_LEVEL_FIELDS = {
    "schema_version", "path", "format", "file_size", "byteorder", "weights", "entries",
    "objects", "tensors", "metadata", "notes", "anomalies",
}  # fmt: skip
WEIGHTS_FIELDS = {"root", "kind", "alternatives", "roles", "counts", "tensors", "attributes"}
TENSOR_FIELDS = {
    "key", "dtype", "shape", "numel", "nbytes", "device", "kind", "role", "storage", "storage_offset",
    "stride", "contiguous", "layout",
}  # fmt: skip
CSV_HEADER = ["key", "dtype", "shape", "numel", "nbytes", "device", "role"]
# Formats whose key order is the reader's own (see tests/formats/test_ground_truth.py).
UNORDERED_FORMATS = {"safetensors", "sharded-safetensors", "sharded-bin"}


def loaded(name: str) -> Any:
    return gt.torch_load_trusted(fixture(name))


def state_dict_of(name: str) -> dict[str, torch.Tensor]:
    record = gt.fixture_record(name)
    return dict(gt.ground_truth_weights(record))


def shape_text(shape: Any) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def ok(result: Result) -> Result:
    """A successful run: exit 0 and nothing on stderr."""
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return result


def table_row(*cells: object) -> str:
    """A regex for a table line that starts with these cells, in order."""
    return "^" + r"\s+".join(re.escape(str(c)) for c in cells) + r"(\s|$)"


def csv_rows(result: Result) -> list[dict[str, str]]:
    reader = csv.reader(io.StringIO(ok(result).stdout))
    header = next(reader)
    assert header == CSV_HEADER
    return [dict(zip(header, row, strict=True)) for row in reader]


# -- table ------------------------------------------------------------------------------


def test_table_has_the_summary_and_one_row_per_weight(cli: Cli) -> None:
    path = fixture("general_checkpoint_tensor_loss")
    out = ok(cli("inspect", path)).stdout
    truth = state_dict_of("general_checkpoint_tensor_loss")
    summary = {
        "file": str(path),
        "format": "torch-zip",
        "file size": f"{path.stat().st_size / 1024:.1f} KiB",
        "weights": f"state_dict at 'model_state_dict', {len(truth)} tensors",
        "entry epoch": "5",
    }
    for label, text in summary.items():
        assert re.search(rf"^{re.escape(label)}:\s+.*{re.escape(text)}", out, re.M), label
    for key, tensor in truth.items():
        row = table_row(key, dtype_name(tensor.dtype), shape_text(tensor.shape), f"{tensor.numel():,}")
        assert re.search(row, out, re.M), key
    assert "optimizer_state_dict" in out  # the summary names the other tensor-holding entry


def test_table_lists_the_ema_alternative(cli: Cli) -> None:
    out = ok(cli("inspect", fixture("timm_checkpoint_with_ema"))).stdout
    assert re.search(r"^weights:\s+state_dict at 'state_dict'", out, re.M)
    assert re.search(r"^also:\s+state_dict_ema", out, re.M)


# -- JSON ---------------------------------------------------------------------------------


def tensor_facts(tensor: torch.Tensor) -> dict[str, Any]:
    """What inspect's JSON states about a strided tensor, from torch."""
    return {
        "dtype": dtype_name(tensor.dtype),
        "shape": list(tensor.shape),
        "numel": tensor.numel(),
        "nbytes": tensor.numel() * tensor.element_size(),
        "stride": list(tensor.stride()),
        "storage_offset": tensor.storage_offset(),
        "contiguous": tensor.is_contiguous(),
        "layout": "strided",
    }


def test_json_has_the_documented_shape(cli: Cli) -> None:
    path = fixture("general_checkpoint_tensor_loss")
    report = cli_json(ok(cli("inspect", path, "--format", "json")))
    assert set(report) == TOP_LEVEL_FIELDS
    assert report["schema_version"] == 1
    assert report["path"] == str(path)
    assert (report["format"], report["byteorder"]) == ("torch-zip", "little")
    assert report["file_size"] == os.path.getsize(path)
    assert set(report["weights"]) == WEIGHTS_FIELDS
    assert (report["weights"]["root"], report["weights"]["kind"]) == (
        "model_state_dict",
        "state_dict",
    )
    for row in report["weights"]["tensors"] + report["tensors"]:
        assert set(row) == TENSOR_FIELDS


@pytest.mark.parametrize("name", ["tensor_layouts", "general_checkpoint_tensor_loss", "dtypes"])
def test_json_tensor_rows_match_torch(cli: Cli, name: str) -> None:
    report = cli_json(ok(cli("inspect", fixture(name), "--format", "json")))
    truth = dict(tensors_in(loaded(name)))
    assert [row["key"] for row in report["tensors"]] == list(truth)
    for row in report["tensors"]:
        expected = tensor_facts(truth[row["key"]])
        assert {k: row[k] for k in expected} == expected, row["key"]
        assert row["device"] == "cpu"


def test_json_rows_name_shared_storages(cli: Cli) -> None:
    rows = cli_json(ok(cli("inspect", fixture("tensor_layouts"), "--format", "json")))["tensors"]
    storage = {row["key"]: row["storage"] for row in rows}
    assert storage["tied.a"] == storage["tied.b"]
    assert storage["slice.head"] == storage["slice.middle"] == storage["slice.tail"]
    assert storage["tied.a"] != storage["slice.head"]


def test_json_reports_the_saved_device(cli: Cli) -> None:
    report = cli_json(ok(cli("inspect", fixture("cuda0_model_optimizer"), "--all", "--format", "json")))
    devices = {row["key"]: row["device"] for row in report["tensors"]}
    assert {devices[f"model.{k}"] for k in state_dict_of("cuda0_model_optimizer")} == {"cuda:0"}
    # Adam's step counters stay on the CPU on a GPU run, and the file says so.
    assert devices["optimizer.state.0.step"] == "cpu"
    assert devices["optimizer.state.0.exp_avg"] == "cuda:0"


@pytest.mark.parametrize("name", [pytest.param(r["name"], id=r["name"]) for r in INDEX])
def test_json_weights_of_every_fixture(cli: Cli, name: str) -> None:
    record = gt.fixture_record(name)
    report = cli_json(ok(cli("inspect", gt.fixture_path(record), "--format", "json")))
    assert report["schema_version"] == 1
    if record["format"] == "raw-pickle":
        assert report["weights"]["root"] is None and report["weights"]["tensors"] == []
        return
    truth = [(k, list(t.shape), dtype_name(t.dtype)) for k, t in state_dict_of(name).items()]
    found = [(t["key"], t["shape"], t["dtype"]) for t in report["weights"]["tensors"]]
    if record["format"] in UNORDERED_FORMATS:
        found, truth = sorted(found), sorted(truth)
    assert report["weights"]["root"] == record["weights_root"]
    assert found == truth


# -- CSV ----------------------------------------------------------------------------------


def test_csv_has_a_header_and_one_row_per_weight(cli: Cli) -> None:
    rows = csv_rows(cli("inspect", fixture("cnn_state_dict"), "--format", "csv"))
    truth = state_dict_of("cnn_state_dict")
    assert [row["key"] for row in rows] == list(truth)
    for row in rows:
        tensor = truth[row["key"]]
        assert row == {
            "key": row["key"],
            "dtype": dtype_name(tensor.dtype),
            "shape": shape_text(tensor.shape),
            "numel": str(tensor.numel()),
            "nbytes": str(tensor.numel() * tensor.element_size()),
            "device": "cpu",
            "role": "parameter",  # the CNN has no buffers
        }


# -- --filter, --all, --sort, --root -----------------------------------------------------------


def test_filter_globs_are_repeatable(cli: Cli) -> None:
    result = cli(
        "inspect",
        fixture("cnn_state_dict"),
        "--format",
        "csv",
        "--filter",
        "conv1.*",
        "--filter",
        "fc1.weight",
    )
    assert [row["key"] for row in csv_rows(result)] == ["conv1.weight", "conv1.bias", "fc1.weight"]


def test_filter_applies_to_json_weights_and_tensors(cli: Cli) -> None:
    path = fixture("model_optimizer_checkpoint")
    report = cli_json(ok(cli("inspect", path, "--format", "json", "--filter", "*.bias")))
    assert [t["key"] for t in report["weights"]["tensors"]] == [
        "conv1.bias",
        "conv2.bias",
        "fc1.bias",
    ]
    assert [t["key"] for t in report["tensors"]] == [
        "model.conv1.bias",
        "model.conv2.bias",
        "model.fc1.bias",
    ]


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_filter_matching_nothing_says_so_and_exits_0(cli: Cli, fmt: str) -> None:
    path = fixture("cnn_state_dict")
    result = cli("inspect", path, "--format", fmt, "--filter", "nope*")
    assert result.exit_code == 0
    assert result.stderr == f"ckpttool: --filter nope* matches no weight key in {path}\n"
    if fmt == "csv":
        assert result.stdout.splitlines() == [",".join(CSV_HEADER)]
    elif fmt == "json":
        assert cli_json(result)["weights"]["tensors"] == []
    else:
        assert re.search(r"^tensors:\s+none shown: --filter matches no key$", result.stdout, re.M)


def test_all_includes_optimizer_state_with_dotted_paths(cli: Cli) -> None:
    rows = csv_rows(cli("inspect", fixture("model_optimizer_checkpoint"), "--all", "--format", "csv"))
    truth = dict(tensors_in(loaded("model_optimizer_checkpoint")))
    assert [row["key"] for row in rows] == list(truth)
    assert {
        "optimizer.state.0.exp_avg",
        "optimizer.state.0.exp_avg_sq",
        "model.conv1.weight",
    } <= set(truth)
    for row in rows:
        assert row["shape"] == shape_text(truth[row["key"]].shape), row["key"]


def test_without_all_only_the_weights_are_shown(cli: Cli) -> None:
    rows = csv_rows(cli("inspect", fixture("model_optimizer_checkpoint"), "--format", "csv"))
    assert [row["key"] for row in rows] == list(state_dict_of("model_optimizer_checkpoint"))


def test_all_follows_list_nesting(cli: Cli) -> None:
    rows = csv_rows(cli("inspect", fixture("lightning_checkpoint"), "--all", "--format", "csv"))
    truth = dict(tensors_in(loaded("lightning_checkpoint")))
    assert [row["key"] for row in rows] == list(truth)
    assert "optimizer_states.0.state.0.exp_avg" in truth


def test_sort_by_key(cli: Cli) -> None:
    rows = csv_rows(cli("inspect", fixture("nested_containers_state_dict"), "--format", "csv", "--sort", "key"))
    keys = [row["key"] for row in rows]
    assert keys == sorted(state_dict_of("nested_containers_state_dict"))


def test_sort_by_size_puts_the_largest_first(cli: Cli) -> None:
    rows = csv_rows(
        cli(
            "inspect",
            fixture("model_optimizer_checkpoint"),
            "--all",
            "--format",
            "csv",
            "--sort",
            "size",
        )
    )
    order = [(-int(row["nbytes"]), row["key"]) for row in rows]
    assert order == sorted(order)
    assert len(rows) == len(tensors_in(loaded("model_optimizer_checkpoint")))


def value_at(obj: Any, dotted: str) -> Any:
    """The loaded value at a dotted path; keys compared as text (optimizer indices are ints)."""
    for part in dotted.split("."):
        (obj,) = [value for key, value in obj.items() if str(key) == part]
    return obj


@pytest.mark.parametrize(
    ("name", "root"),
    [
        ("timm_checkpoint_with_ema", "state_dict_ema"),
        ("model_optimizer_checkpoint", "optimizer.state.0"),
    ],
)
def test_root_overrides_the_weights(cli: Cli, name: str, root: str) -> None:
    report = cli_json(ok(cli("inspect", fixture(name), "--root", root, "--format", "json")))
    truth = value_at(loaded(name), root)
    assert report["weights"]["root"] == root
    assert [t["key"] for t in report["weights"]["tensors"]] == list(truth)


def test_bad_root_is_one_error_line(cli: Cli) -> None:
    path = fixture("model_optimizer_checkpoint")
    line = assert_one_error_line(cli("inspect", path, "--root", "no.such.root"), path=path)
    assert "no.such.root" in line


# -- --tree ----------------------------------------------------------------------------------


def roles_of(model: nn.Module) -> dict[str, str]:
    """state_dict key -> "parameter" or "buffer", as torch's own module says."""
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return {key: "parameter" if key in params else "buffer" for key in model.state_dict()}


def module_totals(
    state_dict: dict[str, torch.Tensor], roles: dict[str, str] | None = None
) -> dict[str, tuple[int, int, int, int]]:
    """(tensors, parameter elements, buffer elements, elements) under every module prefix."""
    totals: dict[str, tuple[int, int, int, int]] = {}
    for key, tensor in state_dict.items():
        role = (roles or {}).get(key)
        parts = key.split(".")
        n = tensor.numel()
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            count, params, buffers, numel = totals.get(prefix, (0, 0, 0, 0))
            totals[prefix] = (
                count + 1,
                params + (n if role == "parameter" else 0),
                buffers + (n if role == "buffer" else 0),
                numel + n,
            )
    return totals


def tree_found(report: dict[str, Any]) -> dict[str, tuple[int, int, int, int]]:
    return {row["prefix"]: (row["tensors"], row["params"], row["buffers"], row["numel"]) for row in report["tree"]}


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("nested_containers_whole_model_package", "nested_containers_whole_model_package"),
        ("batchnorm_whole_model", "batchnorm_whole_model"),
        ("batchnorm_state_dict", "batchnorm_whole_model"),  # the same model, saved as a state_dict
    ],
)
def test_tree_counts_parameters_and_buffers_per_module(cli: Cli, name: str, model: str) -> None:
    report = cli_json(ok(cli("inspect", fixture(name), "--tree", "--format", "json")))
    assert report["schema_version"] == 1
    module = loaded(model)
    assert isinstance(module, nn.Module)
    roles = roles_of(module)
    assert tree_found(report) == module_totals(state_dict_of(name), roles)
    for row in report["tree"]:
        assert row["depth"] == row["prefix"].count(".")
    total = report["total"]
    assert total["parameters"]["numel"] == sum(p.numel() for p in module.parameters())
    assert total["buffers"]["numel"] == sum(module.state_dict()[k].numel() for k, r in roles.items() if r == "buffer")


def test_tree_of_a_state_dict_counts_every_tensor(cli: Cli) -> None:
    name = "nested_containers_state_dict"
    report = cli_json(ok(cli("inspect", fixture(name), "--tree", "--format", "json")))
    truth = module_totals(state_dict_of(name))
    assert {p: (t, n) for p, (t, _, _, n) in tree_found(report).items()} == {
        p: (t, n) for p, (t, _, _, n) in truth.items()
    }


def test_tree_rows_are_nested_parents_first(cli: Cli) -> None:
    """Every row follows its parent (or an earlier sibling's subtree) and is one level deeper."""
    report = cli_json(ok(cli("inspect", fixture("nested_containers_state_dict"), "--tree", "--format", "json")))
    seen: set[str] = set()
    for row in report["tree"]:
        parent = row["prefix"].rpartition(".")[0]
        assert parent == "" or parent in seen, row["prefix"]
        seen.add(row["prefix"])


@pytest.mark.parametrize("depth", [1, 2])
def test_tree_depth_collapses_levels(cli: Cli, depth: int) -> None:
    name = "nested_containers_state_dict"
    report = cli_json(ok(cli("inspect", fixture(name), "--tree", "--depth", depth, "--format", "json")))
    truth = {p: v for p, v in module_totals(state_dict_of(name)).items() if p.count(".") < depth}
    assert {p: (t, n) for p, (t, _, _, n) in tree_found(report).items()} == {
        p: (t, n) for p, (t, _, _, n) in truth.items()
    }


def test_tree_table_is_indented_with_a_total(cli: Cli) -> None:
    out = ok(cli("inspect", fixture("nested_containers_state_dict"), "--tree")).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["module", "params", "buffers", "tensors", "size"]
    report = cli_json(ok(cli("inspect", fixture("nested_containers_state_dict"), "--tree", "--format", "json")))
    names = [line[: len(lines[1].split()[0])].rstrip() for line in lines[2:-1]]
    assert names == ["  " * r["depth"] + r["prefix"].rsplit(".", 1)[-1] for r in report["tree"]]
    truth = state_dict_of("nested_containers_state_dict")
    assert lines[-1].split()[0] == "total"
    assert lines[-1].split()[3] == f"{len(truth):,}"


def test_tree_full_prefix(cli: Cli) -> None:
    out = ok(cli("inspect", fixture("nested_containers_state_dict"), "--tree", "--full-prefix")).stdout
    report = cli_json(ok(cli("inspect", fixture("nested_containers_state_dict"), "--tree", "--format", "json")))
    lines = out.splitlines()
    names = [line[: len(lines[1].split()[0])].rstrip() for line in lines[2:-1]]
    assert names == ["  " * r["depth"] + r["prefix"] for r in report["tree"]]


def test_tree_with_all_groups_optimizer_state(cli: Cli) -> None:
    report = cli_json(
        ok(
            cli(
                "inspect",
                fixture("model_optimizer_checkpoint"),
                "--tree",
                "--all",
                "--format",
                "json",
            )
        )
    )
    truth = dict(tensors_in(loaded("model_optimizer_checkpoint")))
    tensors, params, buffers, numel = tree_found(report)["optimizer"]
    assert (tensors, numel) == (module_totals(truth)["optimizer"][0], module_totals(truth)["optimizer"][3])
    assert (params, buffers) == (0, 0)  # optimizer state is neither


# -- entries and objects ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["general_checkpoint_tensor_loss", "general_checkpoint_float_loss"])
def test_entries_show_epoch_and_the_saved_loss(cli: Cli, name: str) -> None:
    report = cli_json(ok(cli("inspect", fixture(name), "--format", "json")))
    saved = loaded(name)
    loss = saved["loss"].item() if isinstance(saved["loss"], torch.Tensor) else saved["loss"]
    assert report["entries"]["epoch"] == saved["epoch"]
    assert report["entries"]["loss"] == loss
    # The weights and the optimizer state hold tensors: they are not entries.
    assert {"model_state_dict", "optimizer_state_dict"}.isdisjoint(report["entries"])


def test_tensor_loss_is_read_from_the_file(cli: Cli) -> None:
    saved = loaded("general_checkpoint_tensor_loss")["loss"]
    assert isinstance(saved, torch.Tensor) and saved.dim() == 0
    out = ok(cli("inspect", fixture("general_checkpoint_tensor_loss"))).stdout
    (value,) = re.findall(r"^entry loss:\s+(\S+)$", out, re.M)
    assert float(value) == saved.item()  # the float32 value, printed exactly


def test_hyper_parameters_as_a_dict(cli: Cli) -> None:
    report = cli_json(ok(cli("inspect", fixture("lightning_checkpoint"), "--format", "json")))
    saved = loaded("lightning_checkpoint")
    assert isinstance(saved["hyper_parameters"], dict)
    assert report["entries"]["hyper_parameters"] == saved["hyper_parameters"]
    assert report["entries"]["epoch"] == saved["epoch"]
    assert report["entries"]["global_step"] == saved["global_step"]


def test_hyper_parameters_as_a_namespace(cli: Cli) -> None:
    report = cli_json(ok(cli("inspect", fixture("lightning_checkpoint_namespace_hparams"), "--format", "json")))
    saved = loaded("lightning_checkpoint_namespace_hparams")["hyper_parameters"]
    shown = report["entries"]["hyper_parameters"]
    assert {k: v for k, v in shown.items() if k != "__class__"} == vars(saved)
    assert {"path": "hyper_parameters", "class": "argparse.Namespace"} in report["objects"]


def file_class_names(path: Path, fmt: str) -> set[str]:
    data = gt.legacy_main_pickle(path) if fmt == "torch-legacy" else gt.zip_record(path, "/data.pkl")
    return gt.globals_of(data)


def pickled_name(cls: type, names_in_file: set[str]) -> str:
    """A class's name as the file spells it: user classes were pickled under other homes."""
    if cls.__module__ != "tutorial_models":
        return f"{cls.__module__}.{cls.__qualname__}"
    (name,) = [n for n in names_in_file if n.endswith(f".{cls.__name__}") and not n.startswith("torch.")]
    return name


@pytest.mark.parametrize(
    "name",
    [
        "nn_whole_model_package",
        "cnn_whole_model_main",
        "nested_containers_whole_model_package",
        "yolo_style_whole_model_in_dict",
        "legacy_whole_model",
    ],
)
def test_objects_are_the_pickled_modules_with_paths(cli: Cli, name: str) -> None:
    record = gt.fixture_record(name)
    path = gt.fixture_path(record)
    report = cli_json(ok(cli("inspect", path, "--format", "json")))
    model = loaded(name)
    root = record["weights_root"]
    if root:
        model = model[root]
    assert isinstance(model, nn.Module)
    names = file_class_names(path, record["format"])
    expected = [
        {
            "path": f"{root}.{sub}".strip(".") if root else sub,
            "class": pickled_name(type(module), names),
        }
        for sub, module in model.named_modules()
    ]
    assert report["objects"] == expected


def test_a_state_dict_has_no_objects(cli: Cli) -> None:
    assert cli_json(ok(cli("inspect", fixture("cnn_state_dict"), "--format", "json")))["objects"] == []


def test_table_names_the_classes(cli: Cli) -> None:
    out = ok(cli("inspect", fixture("nn_whole_model_package"))).stdout
    assert re.search(r"^classes:\s+models\.net\.NN, torch\.nn\.modules\.linear\.Linear x2$", out, re.M)
    assert re.search(r"^weights:\s+pickled nn\.Module at the whole file, 4 tensors", out, re.M)


# -- metadata -------------------------------------------------------------------------------


def test_safetensors_metadata_is_reported(cli: Cli) -> None:
    from safetensors import safe_open

    path = fixture("safetensors")
    with safe_open(str(path), framework="pt") as f:
        header_metadata = f.metadata()
    report = cli_json(ok(cli("inspect", path, "--format", "json")))
    assert report["metadata"] == header_metadata
    assert report["format"] == "safetensors"


def test_big_endian_byteorder_is_reported(cli: Cli) -> None:
    path = fixture("big_endian_dtypes")
    assert cli_json(ok(cli("inspect", path, "--format", "json")))["byteorder"] == "big"
    assert re.search(r"^byteorder:\s+big$", ok(cli("inspect", path)).stdout, re.M)


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_missing_file_is_one_error_line(cli: Cli, tmp_path: Path, fmt: str) -> None:
    missing = tmp_path / "missing.pt"
    assert_one_error_line(cli("inspect", missing, "--format", fmt), path=missing)


def test_json_errors_are_also_a_json_object_on_stdout(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    result = cli("inspect", missing, "--format", "json")
    assert result.exit_code == 2
    assert assert_json_error(result) == {"path": str(missing), "message": "no such file", "exit_code": 2}


def test_json_usage_errors_are_a_json_object_too(cli: Cli) -> None:
    result = cli("inspect", fixture("cnn_state_dict"), "--sort", "sideways", "--format", "json")
    assert result.exit_code == 2
    error = assert_json_error(result)
    assert error["path"] is None and "--sort" in error["message"]


def test_bare_ckpttool_prints_its_help_and_exits_0(cli: Cli) -> None:
    result = cli()
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.startswith("Usage: ") and "\nCommands:\n" in result.stdout
    assert result.stdout == cli("--help").stdout


def test_not_a_checkpoint_is_one_error_line(cli: Cli, tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("just some notes\n")
    assert_one_error_line(cli("inspect", text), path=text)


def run_ckpttool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckpttool", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("where", ["group", "command"])
def test_debug_shows_a_traceback(tmp_path: Path, where: str) -> None:
    args = ["--debug", "inspect", "missing.pt"] if where == "group" else ["inspect", "--debug", "missing.pt"]
    completed = run_ckpttool(*args, cwd=tmp_path)
    assert completed.returncode != 0
    assert completed.stdout == ""
    assert "Traceback (most recent call last)" in completed.stderr
    assert "missing.pt: no such file" in completed.stderr


@pytest.mark.slow
def test_debug_keeps_the_unreadable_input_exit_code(tmp_path: Path) -> None:
    """Exit codes mean the same everywhere: 2 is an unreadable input, also with --debug."""
    completed = run_ckpttool("--debug", "inspect", "missing.pt", cwd=tmp_path)
    assert completed.returncode == 2
