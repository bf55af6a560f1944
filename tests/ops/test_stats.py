"""`inspect --stats` numbers against torch computing them on the tensors torch loads.

The expectations themselves are in tests/support/stats.py, shared with the CLI tests.
"""

from __future__ import annotations

import gc
import math
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from support.groundtruth import fixture_path, ground_truth_weights, torch_load_trusted
from support.ops import BY_NAME, NO_WEIGHTS, ids, records_where
from support.stats import REL_TOL, assert_stats_match, has_arithmetic, resolve, special_tensors

import ckpttool.ops.inspect.stats as stats_module
from ckpttool.formats import read_checkpoint
from ckpttool.ops.inspect import all_stats, tensor_stats
from ckpttool.weights import NamedTensor, all_tensors, find_weights

WITH_WEIGHTS = records_where(lambda r: r["name"] not in NO_WEIGHTS)


def weight_tensors(path: Path, root: str | None = None) -> list[NamedTensor]:
    return find_weights(read_checkpoint(str(path)).root, root).tensors


# -- every fixture --------------------------------------------------------------------------------


@pytest.mark.parametrize("record", WITH_WEIGHTS, ids=ids(WITH_WEIGHTS))
def test_weight_stats_match_torch(record: dict[str, Any]) -> None:
    truth = ground_truth_weights(record)
    stats = all_stats(weight_tensors(fixture_path(record)))
    assert [s.key for s in stats] and sorted(s.key for s in stats) == sorted(truth)
    for row in stats:
        assert_stats_match(row, truth[row.key])


@pytest.mark.parametrize(
    "name",
    ["model_optimizer_checkpoint", "imagenet_style_checkpoint", "general_checkpoint_tensor_loss"],
)
def test_stats_of_every_tensor_in_a_training_checkpoint(name: str) -> None:
    # --all: optimizer moments and step counters too, keyed by their full dotted path.
    path = fixture_path(BY_NAME[name])
    loaded = torch_load_trusted(path)
    stats = all_stats(all_tensors(read_checkpoint(str(path)).root))
    assert any(".state." in row.key for row in stats)
    for row in stats:
        assert_stats_match(row, resolve(loaded, row.key))


def test_sparse_and_quantized_tensors_get_a_row_without_values() -> None:
    path = fixture_path(BY_NAME["exotic_tensors"])
    loaded = torch_load_trusted(path)
    stats = {row.key: row for row in all_stats(all_tensors(read_checkpoint(str(path)).root))}
    for key, tensor in loaded.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        assert_stats_match(stats[key], tensor)
        if not has_arithmetic(tensor):
            assert (stats[key].min, stats[key].mean, stats[key].std) == (None, None, None)


# -- special values, made for the purpose ---------------------------------------------------------


@pytest.fixture
def specials_file(tmp_path: Path) -> Path:
    path = tmp_path / "specials.pt"
    torch.save(special_tensors(), path)
    return path


def test_special_values(specials_file: Path) -> None:
    truth = special_tensors()
    stats = {row.key: row for row in all_stats(weight_tensors(specials_file))}
    assert sorted(stats) == sorted(truth)
    for key, tensor in truth.items():
        assert_stats_match(stats[key], tensor)


def test_special_values_spelled_out(specials_file: Path) -> None:
    # The rules, stated directly, not only as "what torch computes".
    stats = {row.key: row for row in all_stats(weight_tensors(specials_file))}
    specials = stats["specials"]
    assert (specials.nan, specials.inf) == (1, 2)
    assert (specials.min, specials.max) == (-2.0, 3.5)
    assert specials.zeros == pytest.approx(2 / 8)
    assert math.isclose(specials.mean or 0.0, 2.5 / 5, rel_tol=REL_TOL)
    assert (stats["all_nan"].mean, stats["all_nan"].std, stats["all_nan"].nan) == (None, None, 4)
    assert stats["single"].std is None and stats["single"].mean == 7.0
    assert stats["int64_extremes"].min == torch.iinfo(torch.int64).min
    assert stats["int64_extremes"].max == torch.iinfo(torch.int64).max
    assert stats["empty"].mean is None and stats["empty"].zeros is None
    assert stats["offset"].std == pytest.approx(1.0, rel=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_reduction_combines_exactly(chunk: int, specials_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tensors split over many chunks must give the single-pass answer.
    monkeypatch.setattr(stats_module, "CHUNK_ELEMENTS", chunk)
    truth = {**special_tensors(), **ground_truth_weights(BY_NAME["cnn_state_dict"])}
    rows = all_stats(weight_tensors(specials_file)) + all_stats(weight_tensors(fixture_path(BY_NAME["cnn_state_dict"])))
    for row in rows:
        assert_stats_match(row, truth[row.key])


# -- streaming ------------------------------------------------------------------------------------


class ProgressRecorder:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def advance(self, done: int) -> None:
        self.steps.append(done)


@pytest.mark.slow
def test_tensors_are_read_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each tensor read is garbage before the next one is read.
    original = stats_module.load_tensor
    alive: list[weakref.ref[torch.Tensor]] = []

    def tracking_load(ref: Any) -> torch.Tensor:
        gc.collect()
        assert all(r() is None for r in alive), "an earlier tensor is still held"
        tensor = original(ref)
        alive.append(weakref.ref(tensor))
        return tensor

    monkeypatch.setattr(stats_module, "load_tensor", tracking_load)
    tensors = weight_tensors(fixture_path(BY_NAME["batchnorm_state_dict"]))
    progress = ProgressRecorder()
    rows = all_stats(tensors, progress)
    assert len(alive) == len(tensors) == len(rows)
    assert progress.steps == [t.nbytes for t in tensors]


def test_single_tensor_stats_api() -> None:
    named = weight_tensors(fixture_path(BY_NAME["cnn_state_dict"]))[0]
    truth = ground_truth_weights(BY_NAME["cnn_state_dict"])[named.key]
    row = tensor_stats(named)
    assert row.key == named.key
    assert_stats_match(row, truth)


# -- expanded tensors -----------------------------------------------------------------------------


def expanded_tensors() -> dict[str, torch.Tensor]:
    """Views torch.save keeps as views: stride-0 expansions of a few stored values."""
    row = torch.tensor([1.5, float("nan"), -2.0, float("inf"), 0.0])
    return {
        "rows": row.expand(4, 5),  # stride (0, 1)
        "columns": row[:3].reshape(3, 1).expand(3, 6),  # stride (1, 0)
        "one_value": torch.tensor(7.0).expand(2, 3, 4),  # stride (0, 0, 0): std 0, not None
        "middle": torch.arange(6.0).reshape(2, 1, 3).expand(2, 5, 3),
        "complex": torch.tensor([1 + 2j, float("nan") + 0j]).expand(3, 2),
        "ints": torch.tensor([3, -1], dtype=torch.int16).expand(2, 2),
    }


def test_expanded_tensors_match_torch_on_the_whole_view(tmp_path: Path) -> None:
    truth = expanded_tensors()
    path = tmp_path / "expanded.pt"
    torch.save(truth, path)
    assert all(0 in t.stride() for t in torch.load(path).values())  # saved as views: the case under test
    stats = {row.key: row for row in all_stats(weight_tensors(path))}
    for key, tensor in truth.items():
        assert_stats_match(stats[key], tensor)
    assert (stats["rows"].nan, stats["rows"].inf) == (4, 4)
    assert stats["one_value"].std == 0.0


def test_a_small_overlapping_view_matches_torch(tmp_path: Path) -> None:
    """Strides that read stored elements more than once, under the bound: computed as is."""
    view = torch.arange(5.0).as_strided((3, 3), (1, 1))
    path = tmp_path / "overlap.pt"
    torch.save({"w": view}, path)
    [row] = all_stats(weight_tensors(path))
    assert_stats_match(row, torch.load(path)["w"])
