"""A tiny file declaring a stride-0 view of 2**40 elements over one stored float.

torch.load accepts it (an expansion, as `x.expand(n)` saves), and so must ckpttool: the
commands that read values answer from the stored value (statistics and NaN counts
scale with the repeats) instead of walking 2**40 elements for hours, and the commands
that would copy it out (convert) stop with one line, exit 2, instead of an internal error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.builders import TensorSpec, float_tensor, state_dict_pickle, storage_bytes, torch_zip
from support.cli import assert_one_error_line
from support.hostile import FileWriter, run_cli_process

REPEATS = 1 << 40


@pytest.fixture
def expanded(write: FileWriter) -> Path:
    spec = TensorSpec("w", "0", 1, (REPEATS,), (0,))
    return write("expanded.pt", torch_zip(state_dict_pickle([spec]), {"0": storage_bytes(float_tensor("x", "0", 1))}))


def test_torch_loads_the_expansion(expanded: Path) -> None:
    import torch

    loaded = torch.load(expanded, weights_only=True)["w"]  # noqa: TID251 - the ground truth
    assert loaded.shape == (REPEATS,) and loaded.stride() == (0,) and loaded[12345].item() == 0.0


def test_stats_and_finite_checks_answer_from_the_stored_value(expanded: Path) -> None:
    stats = run_cli_process("inspect", "--stats", "--format", "json", expanded, timeout=60)
    assert stats.exit_code == 0, stats.stderr
    row = stats.json()["stats"][0]
    assert (row["numel"], row["min"], row["max"], row["mean"], row["std"], row["zeros"]) == (REPEATS, 0, 0, 0, 0, 1)
    finite = run_cli_process("check", "--finite", "--format", "json", expanded, timeout=60)
    assert finite.exit_code == 0 and finite.json()["ok"], finite.stdout


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_converting_it_is_one_line_and_nothing_written(expanded: Path, suffix: str) -> None:
    dst = expanded.with_name("out" + suffix)
    outcome = run_cli_process("convert", expanded, dst, timeout=60)
    assert_one_error_line(outcome, "out of memory")
    assert sorted(p.name for p in expanded.parent.iterdir()) == [expanded.name]


@pytest.fixture
def overlapping(write: FileWriter) -> Path:
    """A (2**15, 2**15) view with strides (1, 1) over 2**16 stored floats: 2**30 elements
    from a 256 KiB record, each read up to 2**15 times."""
    side = 1 << 15
    spec = TensorSpec("w", "0", 2 * side, (side, side), (1, 1))
    return write(
        "overlap.pt", torch_zip(state_dict_pickle([spec]), {"0": storage_bytes(float_tensor("x", "0", 2 * side))})
    )


def test_an_overlapping_view_past_the_bound_is_a_limit_not_hours(overlapping: Path) -> None:
    import torch

    assert torch.load(overlapping, weights_only=True)["w"].shape == (1 << 15, 1 << 15)  # noqa: TID251 - ground truth
    stats = run_cli_process("inspect", "--stats", overlapping, timeout=60)
    assert_one_error_line(stats, "overlapping strides", path=overlapping)
    finite = run_cli_process("check", "--finite", "--format", "json", overlapping, timeout=60)
    assert finite.exit_code == 1
    [finding] = [f for f in finite.json()["files"][0]["findings"] if f["check"] == "finite"]
    assert "overlapping strides" in finding["message"] and finding["message"].startswith("w: ")
    for command in (
        ("diff", overlapping, overlapping),
        ("convert", overlapping, overlapping.with_name("o.safetensors")),
    ):
        assert_one_error_line(run_cli_process(*command, timeout=60), "overlapping strides", path=overlapping)
