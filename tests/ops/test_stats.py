"""`inspect --stats` numbers against torch computing them on the tensors torch loads.

Expected values: finite values only, in float64; `std` is the sample standard deviation
(`torch.std`, unbiased); NaN and Inf are counted apart; `zeros` is the share of all
elements equal to zero. ckpttool reduces in chunks, so values may differ from a single
torch reduction by float rounding only.
"""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from groundtruth import fixture_path, ground_truth_weights, torch_load_trusted

import ckpttool.ops.stats as stats_module
from ckpttool.formats import read_checkpoint
from ckpttool.ops.stats import TensorStats, all_stats, tensor_stats
from ckpttool.weights import NamedTensor, all_tensors, find_weights
from ops.support import BY_NAME, NO_WEIGHTS, ids, records_where

WITH_WEIGHTS = records_where(lambda r: r["name"] not in NO_WEIGHTS)
REL_TOL = 1e-9


@dataclass
class Expected:
    """What torch says the stats of one tensor are; None where a value is undefined."""

    min: float | int | None
    max: float | int | None
    mean: float | None
    std: float | None
    nan: int
    inf: int
    zeros: float | None
    scale: float  # largest finite magnitude: the size of rounding errors in sums


def has_arithmetic(tensor: torch.Tensor) -> bool:
    """Dense real tensors torch can widen to float64 (packed float4 cannot; complex,
    sparse and quantized tensors have no single real value per element)."""
    return (
        tensor.layout == torch.strided
        and not tensor.is_quantized
        and not tensor.is_complex()
        and tensor.dtype != torch.float4_e2m1fn_x2
    )


def as_float64(tensor: torch.Tensor) -> torch.Tensor:
    flat = tensor.detach().reshape(-1)
    if flat.dtype == torch.uint64:  # no cast kernel; Python ints convert exactly enough
        return torch.tensor([float(v) for v in flat.tolist()], dtype=torch.float64)
    return flat.to(torch.float64)


def exact_extreme(tensor: torch.Tensor, finite: torch.Tensor, which: str) -> float | int:
    """min/max in the tensor's own terms: integers exactly, floats as float64."""
    flat = tensor.detach().reshape(-1)
    if flat.is_floating_point():
        values = as_float64(flat)[finite]
        return float(getattr(values, which)().item())
    items = [int(v) for v in flat.tolist()]
    return min(items) if which == "min" else max(items)


def expected_stats(tensor: torch.Tensor) -> Expected:
    values = as_float64(tensor)
    finite = torch.isfinite(values)
    kept = values[finite]
    count = kept.numel()
    return Expected(
        min=exact_extreme(tensor, finite, "min") if count else None,
        max=exact_extreme(tensor, finite, "max") if count else None,
        mean=kept.mean().item() if count else None,
        std=kept.std().item() if count > 1 else None,  # unbiased, as torch.std
        nan=int(values.isnan().sum()),
        inf=int(values.isinf().sum()),
        zeros=int((values == 0).sum()) / values.numel() if values.numel() else None,
        scale=kept.abs().max().item() if count else 0.0,
    )


def close(actual: float | int | None, expected: float | int | None, scale: float) -> bool:
    if actual is None or expected is None:
        return actual is None and expected is None
    if isinstance(expected, int) and not isinstance(expected, bool):
        return actual == expected  # integer extremes stay exact, also beyond 2**53
    # Sums in another order differ by rounding relative to the largest magnitude summed.
    return math.isclose(float(actual), expected, rel_tol=REL_TOL, abs_tol=REL_TOL * scale)


def assert_stats_match(actual: TensorStats, tensor: torch.Tensor) -> None:
    assert actual.numel == tensor.numel()
    assert actual.shape == list(tensor.shape)
    assert actual.dtype == str(tensor.dtype).removeprefix("torch.")
    if not has_arithmetic(tensor):
        return
    expected = expected_stats(tensor)
    assert (actual.nan, actual.inf) == (expected.nan, expected.inf), actual.key
    for name in ("min", "max", "mean", "std", "zeros"):
        got, want = getattr(actual, name), getattr(expected, name)
        assert close(got, want, expected.scale), (actual.key, name, got, want)


def weight_tensors(path: Path, root: str | None = None) -> list[NamedTensor]:
    return find_weights(read_checkpoint(str(path)).root, root).tensors


# -- every fixture ------------------------------------------------------------------------------------


@pytest.mark.parametrize("record", WITH_WEIGHTS, ids=ids(WITH_WEIGHTS))
def test_weight_stats_match_torch(record: dict[str, Any]) -> None:
    truth = ground_truth_weights(record)
    stats = all_stats(weight_tensors(fixture_path(record)))
    assert [s.key for s in stats] and sorted(s.key for s in stats) == sorted(truth)
    for row in stats:
        assert_stats_match(row, truth[row.key])


def resolve(obj: Any, dotted: str) -> Any:
    """The object at a dotted path. State_dict keys hold dots themselves (`model.fc1.weight`
    is `obj["model"]["fc1.weight"]`), so the longest key that exists wins; optimizer state
    is keyed by ints (`optimizer.state.0`)."""
    parts, i = dotted.split("."), 0
    while i < len(parts):
        if isinstance(obj, Mapping):
            for j in range(len(parts), i, -1):
                key = ".".join(parts[i:j])
                if key in obj:
                    obj, i = obj[key], j
                    break
            else:
                obj, i = obj[int(parts[i])], i + 1
        elif isinstance(obj, (list, tuple)):
            obj, i = obj[int(parts[i])], i + 1
        else:
            obj, i = getattr(obj, parts[i]), i + 1
    return obj


@pytest.mark.parametrize(
    "name", ["model_optimizer_checkpoint", "imagenet_style_checkpoint", "general_checkpoint_tensor_loss"]
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


# -- special values, made for the purpose --------------------------------------------------------------


def special_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(20240611)
    nan, inf = float("nan"), float("inf")
    matrix = torch.randn(6, 5, generator=generator)
    int64 = torch.iinfo(torch.int64)
    return {
        "specials": torch.tensor([0.0, nan, inf, -inf, 1.0, -2.0, 0.0, 3.5]),
        "all_nan": torch.full((4,), nan),
        "only_inf": torch.tensor([inf, -inf]),
        "one_finite": torch.tensor([nan, 4.25, inf]),
        "single": torch.tensor([7.0]),
        "scalar": torch.tensor(-3.0, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "all_zero": torch.zeros(5, dtype=torch.int32),
        # min and max beyond float64's 53 bits must stay exact.
        "int64_extremes": torch.tensor([int64.min, int64.max, 0, 5], dtype=torch.int64),
        "uint8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([True, False, False, True, True]),
        "half_overflow": torch.tensor([65504.0, inf, -1.0], dtype=torch.float16),
        "bfloat16": torch.randn(64, generator=generator).to(torch.bfloat16),
        # A large offset: a one-pass sum of squares would lose the spread entirely.
        "offset": 1e8 + torch.randn(5000, dtype=torch.float64, generator=generator),
        "transposed": matrix.t(),
        "strided": matrix.reshape(-1)[::3],
    }


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


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_reduction_combines_exactly(chunk: int, specials_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tensors split over many chunks must give the single-pass answer.
    monkeypatch.setattr(stats_module, "CHUNK_ELEMENTS", chunk)
    truth = {**special_tensors(), **ground_truth_weights(BY_NAME["cnn_state_dict"])}
    rows = all_stats(weight_tensors(specials_file)) + all_stats(weight_tensors(fixture_path(BY_NAME["cnn_state_dict"])))
    for row in rows:
        assert_stats_match(row, truth[row.key])


# -- streaming ----------------------------------------------------------------------------------------


class ProgressRecorder:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def advance(self, done: int) -> None:
        self.steps.append(done)


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
