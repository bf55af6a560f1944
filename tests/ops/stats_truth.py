"""What torch says a tensor's `--stats` row should be, for the library and CLI stats tests.

Expected values: finite values only, in float64; `std` is the sample standard deviation
(`torch.std`, unbiased); NaN and Inf are counted apart; `zeros` is the share of all
elements equal to zero. ckpttool reduces in chunks, so values may differ from a single
torch reduction by float rounding only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ckpttool.ops.inspect import TensorStats

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


def assert_stats_match(actual: TensorStats | Mapping[str, Any], tensor: torch.Tensor) -> None:
    """One stats row (from the library, or a row of `--format json`) against torch."""
    row = asdict(actual) if isinstance(actual, TensorStats) else dict(actual)
    assert row["numel"] == tensor.numel()
    assert row["shape"] == list(tensor.shape)
    assert row["dtype"] == str(tensor.dtype).removeprefix("torch.")
    if not has_arithmetic(tensor):
        return
    expected = expected_stats(tensor)
    assert (row["nan"], row["inf"]) == (expected.nan, expected.inf), row["key"]
    for name in ("min", "max", "mean", "std", "zeros"):
        got, want = row[name], getattr(expected, name)
        assert close(got, want, expected.scale), (row["key"], name, got, want)


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
