"""Per-tensor statistics for `inspect --stats`: min, max, mean, std, NaN/Inf counts, zeros.

Tensors are read one at a time and reduced in fixed-size chunks (float64 partial
sums combined exactly with Chan's formula), so memory stays bounded by the largest
tensor plus one chunk; an expanded tensor's repeats are counted, not read again.
min/max/mean/std cover the finite values; NaN and Inf are counted apart. std is the
sample standard deviation, as `torch.std` computes it.

Complex tensors follow torch's own definitions, per complex element: no min/max (torch
defines no order on them: None), mean a complex number, std real (`torch.std` of a
complex tensor: the root of the mean squared distance from the mean), NaN and Inf counted
as `torch.isnan`/`torch.isinf` count them, zeros the share of elements equal to 0+0j.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpttool.checkpoint import TensorRef
from ckpttool.dtypes import DTYPES
from ckpttool.errors import LimitError
from ckpttool.tensordata import allocating, load_tensor
from ckpttool.weights import NamedTensor

if TYPE_CHECKING:
    import torch

    from ckpttool.progress import Progress

CHUNK_ELEMENTS = 1 << 22


@dataclass(slots=True)
class TensorStats:
    key: str
    dtype: str
    shape: list[int]
    numel: int
    min: float | int | None  # None for complex tensors too: torch defines no order on them
    max: float | int | None
    mean: float | complex | None
    std: float | None
    nan: int
    inf: int
    zeros: float | None  # share of elements equal to zero


@dataclass(slots=True)
class _Moments:
    """Running count, mean and sum of squared deviations, merged chunk by chunk (Chan et al.)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: torch.Tensor) -> None:
        import torch

        n = values.numel()
        if n == 0:
            return
        variance, mean_t = torch.var_mean(values, correction=0)  # one float64 pass
        mean, m2 = mean_t.item(), variance.item() * n
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def repeat(self, times: int) -> None:
        """Every value seen `times` times: the mean stays, the count and the sum of squared
        deviations scale."""
        self.count *= times
        self.m2 *= times

    def std(self) -> float | None:
        return (self.m2 / (self.count - 1)) ** 0.5 if self.count > 1 else None


def tensor_stats(named: NamedTensor) -> TensorStats:
    import torch

    ref = named.tensor
    stats = TensorStats(named.key, ref.dtype, list(ref.shape), ref.numel, None, None, None, None, 0, 0, None)
    if ref.layout != "strided" or ref.storage is None or DTYPES[ref.dtype].kind in ("quantized", "other"):
        return stats
    distinct, repeats = readable_view(ref, named.key)
    with allocating():
        flat = distinct.reshape(-1)
    if DTYPES[ref.dtype].kind == "complex":
        return _complex_stats(flat, stats, repeats)
    moments, zeros = _Moments(), 0
    for chunk in torch.split(flat, CHUNK_ELEMENTS):
        values = _reducible(chunk)
        if values.numel() == 0:
            continue
        low, high = (v.item() for v in torch.aminmax(values))
        if values.is_floating_point() and not (math.isfinite(low) and math.isfinite(high)):
            # NaN propagates into min/max and Inf sits at an end: only now look closer
            finite = torch.isfinite(values)
            nan = int(torch.isnan(values).sum())
            stats.nan += nan
            stats.inf += values.numel() - int(finite.sum()) - nan
            values = values[finite]
            if not values.numel():
                continue
            low, high = (v.item() for v in torch.aminmax(values))
        zeros += values.numel() - int(torch.count_nonzero(values))
        moments.add(values.to(torch.float64))
        stats.min, stats.max = _lesser(stats.min, low), _greater(stats.max, high)
    moments.repeat(repeats)
    stats.nan, stats.inf = stats.nan * repeats, stats.inf * repeats
    stats.mean = moments.mean if moments.count else None
    stats.std = moments.std()
    stats.zeros = zeros / flat.numel() if flat.numel() else None  # NaN and Inf are not zeros
    return stats


def _complex_stats(flat: torch.Tensor, stats: TensorStats, repeats: int) -> TensorStats:
    """Per complex element, as torch defines them; real and imaginary parts are never mixed
    into one series (min/max over both parts would mean nothing)."""
    import torch

    real, imag, zeros = _Moments(), _Moments(), 0
    for chunk in torch.split(flat, CHUNK_ELEMENTS):
        chunk = chunk.to(torch.complex64) if chunk.dtype == torch.complex32 else chunk  # no chalf reductions
        nan, inf = torch.isnan(chunk), torch.isinf(chunk)
        stats.nan += int(nan.sum())
        stats.inf += int(inf.sum())
        values = chunk[torch.isfinite(chunk)] if bool(nan.any() or inf.any()) else chunk
        parts = torch.view_as_real(values).to(torch.float64)
        real.add(parts[:, 0])
        imag.add(parts[:, 1])
        zeros += values.numel() - int(torch.count_nonzero(values))
    real.repeat(repeats)
    imag.repeat(repeats)
    stats.nan, stats.inf = stats.nan * repeats, stats.inf * repeats
    if real.count:
        stats.mean = complex(real.mean, imag.mean)
    if real.count > 1:  # |z - mean|^2 = (re - mean.re)^2 + (im - mean.im)^2, summed over both
        stats.std = ((real.m2 + imag.m2) / (real.count - 1)) ** 0.5
    stats.zeros = zeros / flat.numel() if flat.numel() else None
    return stats


def _reducible(chunk: torch.Tensor) -> torch.Tensor:
    """A dtype torch can reduce that holds every value exactly (large integers included)."""
    import torch

    if chunk.dtype in (torch.bool, torch.uint16, torch.uint32):
        return chunk.to(torch.int64)
    if chunk.dtype == torch.uint64:
        return chunk.to(torch.float64)  # no wider integer type; min/max beyond 2**53 round
    if chunk.is_floating_point() and chunk.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return chunk.to(torch.float32)  # float8 and friends have no reductions
    return chunk


def _lesser(a: Any, b: Any) -> Any:
    return b if a is None or b < a else a


def _greater(a: Any, b: Any) -> Any:
    return b if a is None or b > a else a


def all_stats(tensors: Iterable[NamedTensor], progress: Progress | None = None) -> list[TensorStats]:
    out = []
    for named in tensors:
        out.append(tensor_stats(named))
        if progress is not None:
            progress.advance(named.tensor.nbytes)
    return out


def non_finite(ref: TensorRef, key: str = "a tensor") -> tuple[int, int]:
    """NaN and Inf counts of one tensor, in chunks (0, 0 for types without them)."""
    import torch

    if ref.layout != "strided" or ref.storage is None or DTYPES[ref.dtype].kind not in ("float", "complex"):
        return 0, 0
    distinct, repeats = readable_view(ref, key)
    with allocating():
        flat = distinct.reshape(-1)
    nan = inf = 0
    for chunk in torch.split(flat, CHUNK_ELEMENTS):  # complex: per element, as torch.isnan/isinf count
        values = chunk.to(torch.float32) if chunk.dtype.itemsize == 1 else chunk
        values = values.to(torch.complex64) if values.dtype == torch.complex32 else values
        nan += int(torch.isnan(values).sum())
        inf += int(torch.isinf(values).sum())
    return nan * repeats, inf * repeats


def readable_view(ref: TensorRef, key: str) -> tuple[torch.Tensor, int]:
    """The tensor without its repeats (`without_repeats`); a view too costly to read (see
    `tensordata.check_overlap`) is a LimitError naming `key`."""
    try:
        return without_repeats(load_tensor(ref))
    except LimitError as exc:
        raise LimitError(f"{key}: {exc.message}", path=exc.path) from None


def without_repeats(view: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The view with its stride-0 dimensions cut to one element, and how many times each
    of its elements repeats in the whole: an expanded tensor (`x.expand(...)`, saved as
    such) is read once, not once per repeat (2**40 repeats of one stored float would take
    hours). Every statistic but the counts is the same on it; the counts scale."""
    repeats, index = 1, []
    for size, stride in zip(view.shape, view.stride(), strict=True):
        repeated = stride == 0 and size > 1
        repeats *= size if repeated else 1
        index.append(slice(0, 1) if repeated else slice(None))
    return view[tuple(index)], repeats
