"""`ckpttool inspect --stats`: per-tensor min, max, mean, std, NaN/Inf counts and zero share.

Every row is compared with torch computing the same numbers on the tensor torch
loads (see tests/support/stats.py for the rules). A big generated fixture checks,
in a child process, that memory stays bounded while tensors are streamed.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from support.cli import assert_one_error_line, cli_json
from support.groundtruth import fixture, ground_truth_weights, torch_load_trusted
from support.ops import (
    BY_NAME,
    committed_fixtures_unchanged,
    unchanged,
)
from support.stats import assert_stats_match, resolve, special_tensors

Cli = Callable[..., Result]
COLUMNS = ["key", "dtype", "shape", "min", "max", "mean", "std", "nan", "inf", "zeros"]
ROW_FIELDS = {"key", "dtype", "shape", "numel", "min", "max", "mean", "std", "nan", "inf", "zeros"}

__all__ = ["committed_fixtures_unchanged"]  # autouse: the committed fixtures stay as they were


def strict_json(text: str) -> Any:
    """JSON as the standard has it: NaN and Infinity are not numbers there."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def stats_json(cli: Cli, path: Path, *options: Any) -> dict[str, Any]:
    with unchanged(path):
        result = cli("inspect", "--stats", "--format", "json", path, *options)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    cli_json(result)  # shared check that stdout holds the JSON
    report: dict[str, Any] = strict_json(result.stdout)
    assert report["schema_version"] == 1
    assert report["path"].startswith(str(path))  # a sharded folder reports its index file
    assert all(set(row) == ROW_FIELDS for row in report["stats"])
    return report


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "cnn_state_dict",
        "batchnorm_whole_model",
        "tensor_layouts",
        "legacy_tar_layouts",
        "dtypes",
        "big_endian_dtypes",
        "safetensors_dtypes",
        "sharded_bin",
        "torchscript_scripted",
        "cuda0_model_optimizer",
    ],
)
def test_rows_match_torch(cli: Cli, name: str) -> None:
    truth = ground_truth_weights(BY_NAME[name])
    rows = stats_json(cli, fixture(name))["stats"]
    assert sorted(row["key"] for row in rows) == sorted(truth)
    for row in rows:
        assert_stats_match(row, truth[row["key"]])


@pytest.mark.slow
def test_all_covers_optimizer_state(cli: Cli) -> None:
    path = fixture("model_optimizer_checkpoint")
    loaded = torch_load_trusted(path)
    rows = stats_json(cli, path, "--all")["stats"]
    keys = {row["key"] for row in rows}
    assert any(key.startswith("optimizer.state.") for key in keys)
    assert any(key.startswith("model.") for key in keys)
    for row in rows:
        assert_stats_match(row, resolve(loaded, row["key"]))


@pytest.mark.slow
def test_default_is_the_weights_only(cli: Cli) -> None:
    rows = stats_json(cli, fixture("model_optimizer_checkpoint"))["stats"]
    truth = ground_truth_weights(BY_NAME["model_optimizer_checkpoint"])
    assert sorted(row["key"] for row in rows) == sorted(truth)


def test_filter(cli: Cli) -> None:
    rows = stats_json(cli, fixture("cnn_state_dict"), "--filter", "conv1.*")["stats"]
    assert [row["key"] for row in rows] == ["conv1.weight", "conv1.bias"]


def test_root(cli: Cli) -> None:
    path = fixture("timm_checkpoint_with_ema")
    truth = torch_load_trusted(path)["state_dict_ema"]
    rows = stats_json(cli, path, "--root", "state_dict_ema")["stats"]
    assert sorted(row["key"] for row in rows) == sorted(truth)
    for row in rows:
        assert_stats_match(row, truth[row["key"]])


@pytest.mark.slow
def test_sort_by_size(cli: Cli) -> None:
    rows = stats_json(cli, fixture("cnn_state_dict"), "--sort", "size")["stats"]
    sizes = [row["numel"] for row in rows]  # one dtype throughout: size follows numel
    assert sizes == sorted(sizes, reverse=True)


# -- special values --------------------------------------------------------------------------------


@pytest.fixture
def specials_file(tmp_path: Path) -> Path:
    path = tmp_path / "specials.pt"
    torch.save(special_tensors(), path)
    return path


@pytest.mark.slow
def test_special_values_in_json(cli: Cli, specials_file: Path) -> None:
    truth = special_tensors()
    rows = {row["key"]: row for row in stats_json(cli, specials_file)["stats"]}
    assert sorted(rows) == sorted(truth)
    for key, tensor in truth.items():
        assert_stats_match(rows[key], tensor)
    # Undefined values are null, never NaN (which JSON cannot hold).
    assert rows["all_nan"]["mean"] is None and rows["all_nan"]["nan"] == 4
    assert rows["specials"]["inf"] == 2


@pytest.mark.slow
def test_csv_matches_json(cli: Cli, specials_file: Path) -> None:
    result = cli("inspect", "--stats", "--format", "csv", specials_file)
    assert result.exit_code == 0, result.stderr
    table = list(csv.reader(io.StringIO(result.stdout)))
    assert table[0] == COLUMNS
    rows = {row["key"]: row for row in stats_json(cli, specials_file)["stats"]}
    assert len(table) - 1 == len(rows)
    for cells in table[1:]:
        row = rows[cells[0]]
        for column, cell in zip(COLUMNS[3:], cells[3:], strict=True):
            value = row[column]
            assert (cell == "") if value is None else float(cell) == float(value), (cells[0], column)


@pytest.mark.slow
def test_table(cli: Cli, specials_file: Path) -> None:
    result = cli("inspect", "--stats", specials_file)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    # The share of zeros is a percentage in the table, and labelled so.
    assert lines[0].split() == [*COLUMNS[:-1], "zeros", "%"]
    assert len(lines) == 2 + len(special_tensors())  # header, rule, one line per tensor


@pytest.mark.slow
def test_table_zeros_are_a_percentage(cli: Cli, tmp_path: Path) -> None:
    tensors = {
        "quarter": torch.tensor([0.0, 1.0, 2.0, 3.0]),
        "none": torch.ones(8),
        "few": torch.cat([torch.zeros(1), torch.ones(99_999)]),
        "almost_all": torch.cat([torch.ones(1), torch.zeros(99_999)]),
    }
    path = tmp_path / "zeros.pt"
    torch.save(tensors, path)
    result = cli("inspect", "--stats", path)
    assert result.exit_code == 0, result.stderr
    shares = {line.split()[0]: line.split()[-1] for line in result.stdout.splitlines()[2:]}
    truth = {key: (t == 0).double().mean().item() * 100 for key, t in tensors.items()}
    assert shares["quarter"] == f"{truth['quarter']:.2f}" == "25.00"
    assert shares["none"] == "0.00" and truth["none"] == 0
    # A share that rounds to 0 or 100 but is not says so.
    assert 0 < truth["few"] < 0.005 and shares["few"] == "<0.01"
    assert 99.995 < truth["almost_all"] < 100 and shares["almost_all"] == ">99.99"


# -- errors ------------------------------------------------------------------------------------------


def test_missing_file_is_one_error_line(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "missing.pt"
    assert_one_error_line(cli("inspect", "--stats", path), str(path))


def test_not_a_checkpoint_is_one_error_line(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    assert_one_error_line(cli("inspect", "--stats", path), str(path))


def test_truncated_record_is_one_error_line(cli: Cli, tmp_path: Path) -> None:
    # The pickle reads fine; the tensor bytes stop short. Found only when data is read.
    source = fixture("cnn_state_dict").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(source[: len(source) - 2000])
    result = cli("inspect", "--stats", path)
    assert_one_error_line(result, str(path))


# -- memory stays bounded ------------------------------------------------------------------------------

# Runs in a child: peak RSS after a warm-up on a small file (torch and every module
# imported), then after --stats on the big one. The growth is what streaming bounds.
MEMORY_DRIVER = textwrap.dedent(
    """
    import json, resource, sys
    from ckpttool.cli import main

    small, big, report = sys.argv[1:4]
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    main.main(["inspect", "--stats", "--format", "json", small], standalone_mode=False)
    before = peak()
    main.main(["inspect", "--stats", "--format", "json", big], standalone_mode=False)
    with open(report, "w") as f:
        json.dump({"before": before, "after": peak()}, f)
    """
)


LARGE_NUMEL = 16 * 2**20  # 64 MiB of float32, four of the reducer's chunks


@pytest.fixture(scope="module")
def large_tensor_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 64 MiB tensor, as the generator's `large_tensor` fixture holds (saved here
    directly: running the generator costs a second interpreter)."""
    path = tmp_path_factory.mktemp("big") / "large_tensor.pth"
    generator = torch.Generator().manual_seed(64)
    torch.save({"weight": torch.randn(LARGE_NUMEL, generator=generator)}, path)
    return path


@pytest.mark.slow
def test_stats_memory_is_bounded_by_the_tensor_not_a_copy_per_step(large_tensor_file: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "rss.json"
    small = fixture("cnn_state_dict")
    with unchanged(large_tensor_file):
        child = subprocess.run(
            [sys.executable, "-c", MEMORY_DRIVER, str(small), str(large_tensor_file), str(report_path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
    assert child.returncode == 0, child.stderr
    peaks = json.loads(report_path.read_text())
    growth = peaks["after"] - peaks["before"]
    file_size = large_tensor_file.stat().st_size
    # One tensor's bytes plus one float64 chunk and its masks; far from the copies a
    # whole-tensor float64 reduction (8/4 of the file per copy) would need.
    assert growth < 3 * file_size, f"peak RSS grew {growth / 2**20:.0f} MiB for a {file_size / 2**20:.0f} MiB file"

    # The streamed answer is still the whole tensor's (values checked in depth elsewhere).
    big_row = json.loads(child.stdout.splitlines()[-1])["stats"][0]
    assert (big_row["numel"], big_row["nan"], big_row["inf"]) == (LARGE_NUMEL, 0, 0)
    assert abs(big_row["mean"]) < 1e-2 and abs(big_row["std"] - 1.0) < 1e-2
