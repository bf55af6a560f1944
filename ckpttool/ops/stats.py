"""Per-tensor statistics for `inspect --stats`: min, max, mean, std, NaN/Inf counts, zeros.

Tensors are read one at a time and reduced in fixed-size chunks (float64 partial
sums combined exactly with Chan's formula), so memory stays bounded by the largest
tensor plus one chunk. min/max/mean/std cover the finite values; NaN and Inf are
counted apart. std is the sample standard deviation, as `torch.std` computes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpttool.checkpoint import TensorRef
from ckpttool.dtypes import DTYPES
from ckpttool.tensordata import load_tensor
from ckpttool.weights import NamedTensor

if TYPE_CHECKING:
    import torch

CHUNK_ELEMENTS = 1 << 22


@dataclass(slots=True)
class TensorStats:
    key: str
    dtype: str
    shape: list[int]
    numel: int
    min: float | int | None
    max: float | int | None
    mean: float | None
    std: float | None
    nan: int
    inf: int
    zeros: float | None  # share of elements equal to zero


@dataclass(slots=True)
class _Moments:
    """Running count, mean and sum of squared deviations (Chan et al.)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: torch.Tensor) -> None:
        n = values.numel()
        if n == 0:
            return
        mean = values.mean().item()
        m2 = ((values - mean) ** 2).sum().item()
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def std(self) -> float | None:
        return (self.m2 / (self.count - 1)) ** 0.5 if self.count > 1 else None


def tensor_stats(named: NamedTensor) -> TensorStats:
    import torch

    ref = named.tensor
    stats = TensorStats(named.key, ref.dtype, list(ref.shape), ref.numel, None, None, None, None, 0, 0, None)
    if ref.layout != "strided" or ref.storage is None or DTYPES[ref.dtype].kind in ("quantized", "other"):
        return stats
    flat = load_tensor(ref).reshape(-1)
    if DTYPES[ref.dtype].kind == "complex":
        flat = torch.view_as_real(flat).reshape(-1)
    moments, zeros = _Moments(), 0
    for chunk in flat.split(CHUNK_ELEMENTS):
        values = chunk.to(torch.float64)
        finite = torch.isfinite(values)
        stats.nan += int(torch.isnan(values).sum())
        stats.inf += int(torch.isinf(values).sum())
        zeros += int((values == 0).sum())
        kept = values[finite]
        moments.add(kept)
        if kept.numel():
            stats.min = _lesser(stats.min, _exact(chunk, finite, "min"))
            stats.max = _greater(stats.max, _exact(chunk, finite, "max"))
    stats.mean = moments.mean if moments.count else None
    stats.std = moments.std()
    stats.zeros = zeros / flat.numel() if flat.numel() else None
    return stats


def _exact(chunk: torch.Tensor, finite: torch.Tensor, which: str) -> Any:
    """min/max in the tensor's own dtype, so large integers stay exact."""
    import torch

    values = chunk[finite] if chunk.is_floating_point() else chunk
    if values.dtype == torch.uint64:  # no reductions, and no wider integer type to use
        return (min if which == "min" else max)(values.tolist())
    if values.dtype in (torch.bool, torch.uint16, torch.uint32):
        values = values.to(torch.int64)
    elif values.is_floating_point() and values.dtype not in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    ):
        values = values.to(torch.float32)  # float8 and friends have no reductions
    return getattr(values, which)().item()


def _lesser(a: Any, b: Any) -> Any:
    return b if a is None or b < a else a


def _greater(a: Any, b: Any) -> Any:
    return b if a is None or b > a else a


def all_stats(tensors: Iterable[NamedTensor], progress: Any = None) -> list[TensorStats]:
    out = []
    for named in tensors:
        out.append(tensor_stats(named))
        if progress is not None:
            progress.advance(named.tensor.nbytes)
    return out


def non_finite(ref: TensorRef) -> tuple[int, int]:
    """NaN and Inf counts of one tensor, in chunks (0, 0 for types without them)."""
    import torch

    if ref.layout != "strided" or ref.storage is None or DTYPES[ref.dtype].kind not in ("float", "complex"):
        return 0, 0
    flat = load_tensor(ref).reshape(-1)
    if DTYPES[ref.dtype].kind == "complex":
        flat = torch.view_as_real(flat).reshape(-1)
    nan = inf = 0
    for chunk in flat.split(CHUNK_ELEMENTS):
        values = chunk.to(torch.float32) if chunk.dtype.itemsize == 1 else chunk
        nan += int(torch.isnan(values).sum())
        inf += int(torch.isinf(values).sum())
    return nan, inf
