"""Two tensors' values compared element by element, block by block, with numpy.

What counts as equal is torch's: without a tolerance as `torch.equal` (NaN never equals
NaN unless `equal_nan`; -0.0 equals 0.0), with one as `torch.allclose`
(|a - b| <= atol + rtol * |b|; an infinity is close only to itself). Both sides are
widened first to a type that holds every value of either exactly - float64 for real
floats (float32, float16, bfloat16, float8), complex128 for complex, int64 for integers
and bool (two uint64 tensors compare in their own bits: float64 cannot tell 2**60 from
2**60 + 1) - which is also how tensors of different dtypes compare (`--ignore-dtype`).

For a pair that differs: how many elements differ and their share, and over the
elements finite in both, the largest |a - b|, the largest |a - b| / |b| (where b is not
0) and the relative L2 error ||a - b|| / ||a||.

Blocks of the same dtype whose bytes are equal need no arithmetic: equal bytes are equal
values, unless they hold a NaN and NaN is not equal to itself. That makes a file against
its own copy in another format a memcmp plus a NaN screen, at memory speed. Memory is a
few blocks, whatever the tensor's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from ckpttool.checkpoint import TensorRef
from ckpttool.dtypes import DTYPES
from ckpttool.tensordata import read_span
from ckpttool.tensormap import MappedFiles, element_blocks, readable, same_bytes

if TYPE_CHECKING:
    import numpy as np

READ_ELEMENTS = 1 << 20  # per block read: few calls (memcmp, CRC hand-offs, page releases) per GB
STEP_ELEMENTS = 1 << 18  # per arithmetic step: 2 MB float64 buffers that stay in cache


@dataclass(frozen=True)
class Tolerance:
    atol: float = 0.0
    rtol: float = 0.0
    equal_nan: bool = False

    @property
    def exact(self) -> bool:
        return self.atol == 0 and self.rtol == 0


@dataclass
class Errors:
    """What the blocks of one pair add up to."""

    numel: int
    mismatched: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    sq_diff: float = 0.0  # sum of |a - b|^2 over the elements finite in both
    sq_a: float = 0.0  # sum of |a|^2 over the same elements

    def row(self) -> dict[str, Any]:
        if self.sq_a > 0:
            rel_l2 = math.sqrt(self.sq_diff) / math.sqrt(self.sq_a)
        else:
            rel_l2 = 0.0 if self.sq_diff == 0 else math.inf
        return {
            "mismatched": self.mismatched,
            "numel": self.numel,
            "share": self.mismatched / self.numel if self.numel else 0.0,
            "max_abs": _json_number(self.max_abs),
            "max_rel": _json_number(self.max_rel),
            "rel_l2": _json_number(rel_l2),
        }


UNCOMPARABLE = {"mismatched": None, "share": None, "max_abs": None, "max_rel": None, "rel_l2": None}


def compare_values(a: TensorRef, b: TensorRef, tolerance: Tolerance, files: MappedFiles) -> dict[str, Any] | None:
    """None when the values agree; otherwise the row of what differs (numel, mismatched,
    share, max_abs, max_rel, rel_l2). Shapes are equal; dtypes may differ."""
    if a.storage is None or b.storage is None:
        # a tensor saved without data (on the meta device): two of them hold the same, as far
        # as the files say; against values, there is nothing to compare them with
        if a.storage is None and b.storage is None:
            return None
        return {**UNCOMPARABLE, "numel": a.numel, "no_data": "a" if a.storage is None else "b"}
    if a.layout != "strided" or b.layout != "strided":
        return _compare_parts(a, b, tolerance, files)
    if not readable(a.dtype) or not readable(b.dtype):
        # quantized and packed types: only identical bytes count as equal
        same = a.dtype == b.dtype and read_span(a)[0] == read_span(b)[0]
        return None if same else {**UNCOMPARABLE, "numel": a.numel}
    errors, equal_blocks, work = Errors(a.numel), [], _Work(min(a.numel, STEP_ELEMENTS))
    blocks = zip(element_blocks(a, files, READ_ELEMENTS), element_blocks(b, files, READ_ELEMENTS), strict=True)
    for index, (xa, xb) in enumerate(blocks):
        if a.dtype == b.dtype and same_bytes(xa, xb) and (tolerance.equal_nan or not has_nan(xa, a.dtype)):
            equal_blocks.append(index)
            continue
        for start in range(0, len(xa), STEP_ELEMENTS):
            wa = work.widen(xa[start : start + STEP_ELEMENTS], a.dtype, work.a)
            wb = work.widen(xb[start : start + STEP_ELEMENTS], b.dtype, work.b)
            _accumulate(errors, wa, wb, tolerance, work)
    if errors.mismatched == 0:
        return None
    # ||a|| spans the whole tensor: add the blocks skipped for being equal
    for index, xa in enumerate(element_blocks(a, files, READ_ELEMENTS)):
        if equal_blocks and index == equal_blocks[0]:
            equal_blocks.pop(0)
            for start in range(0, len(xa), STEP_ELEMENTS):
                errors.sq_a += _sum_squares(work.widen(xa[start : start + STEP_ELEMENTS], a.dtype, work.a))
    return errors.row()


class _Work:
    """float64 buffers for one block, reused: a fresh multi-megabyte array per operation
    costs more in page faults than the arithmetic does."""

    def __init__(self, n: int) -> None:
        import numpy as np

        self.a, self.b, self.diff, self.scale, self.limit = (np.empty(n) for _ in range(5))
        self.flags = np.empty(n, np.bool_)
        self.bits = np.empty(n, np.uint32)

    def widen(self, raw: np.ndarray, dtype: str, out: np.ndarray) -> np.ndarray:
        """`widen`, real floats into `out` (one of this block's buffers)."""
        import numpy as np

        n = len(raw)
        if dtype == "float64":
            return raw
        if dtype == "bfloat16":  # the upper half of a float32
            bits = np.left_shift(raw, 16, out=self.bits[:n], dtype=np.uint32)
            raw = bits.view(np.float32)
        elif dtype not in ("float32", "float16"):
            return widen(raw, dtype)
        np.copyto(out[:n], raw)
        return out[:n]


def _compare_parts(a: TensorRef, b: TensorRef, tolerance: Tolerance, files: MappedFiles) -> dict[str, Any] | None:
    """Sparse tensors agree when their layouts and every part (indices, values) agree."""
    parts_a, parts_b = (a.extra or {}).get("parts", []), (b.extra or {}).get("parts", [])
    if a.layout != b.layout or len(parts_a) != len(parts_b):
        return {**UNCOMPARABLE, "numel": a.numel}
    for part_a, part_b in zip(parts_a, parts_b, strict=True):
        if part_a.shape != part_b.shape:
            return {**UNCOMPARABLE, "numel": a.numel}
        result = compare_values(part_a, part_b, tolerance, files)
        if result is not None:
            return result
    return None


# -- arithmetic on one pair of blocks ----------------------------------------------------------


def _accumulate(errors: Errors, a: np.ndarray, b: np.ndarray, tolerance: Tolerance, work: _Work) -> None:
    if a.dtype.kind == "f" and b.dtype.kind == "f" and _finite_nonzero(errors, a, b, tolerance, work):
        return
    _masked(errors, a, b, tolerance)


def _finite_nonzero(errors: Errors, a: np.ndarray, b: np.ndarray, tolerance: Tolerance, work: _Work) -> bool:
    """The common case in fewer passes and no masks: every value finite, no zero in b.
    False (nothing added) when the block is not such a case. (No np.dot: BLAS threads
    spin against each other on a busy machine, at ten times the cost.)"""
    import numpy as np

    with np.errstate(all="ignore"):
        diff, scale = work.diff[: len(a)], work.scale[: len(a)]
        np.subtract(a, b, out=diff)
        np.abs(diff, out=diff)
        largest = float(diff.max())
        if not math.isfinite(largest):  # a NaN or an infinity on either side
            return False
        np.abs(b, out=scale)
        if not scale.min() > 0:
            return False
        if not tolerance.exact:  # close: |a - b| <= atol + rtol * |b|
            limit = np.multiply(scale, tolerance.rtol, out=work.limit[: len(a)])
            limit += tolerance.atol
            errors.mismatched += int(np.count_nonzero(np.greater(diff, limit, out=work.flags[: len(a)])))
        elif diff.min() > 0:  # all differ, as after a cast or an update: no count needed
            errors.mismatched += diff.size
        else:
            errors.mismatched += int(np.count_nonzero(diff))
        errors.max_abs = max(errors.max_abs, largest)
        errors.sq_diff += _sum_squares(diff)
        errors.sq_a += _sum_squares(a)
        np.divide(diff, scale, out=scale)
        errors.max_rel = max(errors.max_rel, float(scale.max()))
    return True


def _masked(errors: Errors, a: np.ndarray, b: np.ndarray, tolerance: Tolerance) -> None:
    """Any block: NaN, infinities, zeros, complex and integer values."""
    import numpy as np

    with np.errstate(all="ignore"):
        errors.mismatched += int(np.count_nonzero(~_close(a, b, tolerance)))
        fa, fb = _inexact(a), _inexact(b)
        finite = np.isfinite(fa) & np.isfinite(fb)
        diff = np.abs(fa - fb)[finite]
        scale = np.abs(fb)[finite]
        if diff.size:
            errors.max_abs = max(errors.max_abs, float(diff.max()))
            nonzero = scale > 0
            if nonzero.any():
                errors.max_rel = max(errors.max_rel, float((diff[nonzero] / scale[nonzero]).max()))
        errors.sq_diff += _sum_squares(diff)
        errors.sq_a += _sum_squares(fa[finite])


def _close(a: np.ndarray, b: np.ndarray, tolerance: Tolerance) -> np.ndarray:
    """Element-wise torch.equal / torch.allclose semantics."""
    import numpy as np

    if tolerance.exact:
        close: np.ndarray = np.equal(a, b)
        if tolerance.equal_nan and a.dtype.kind in "fc" and b.dtype.kind in "fc":
            close |= np.isnan(a) & np.isnan(b)
        return close
    return np.asarray(np.isclose(a, b, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=tolerance.equal_nan))


def _inexact(x: np.ndarray) -> np.ndarray:
    """Integers as float64 for the error sizes (uint64 beyond 2**53 rounds; equality does not)."""
    import numpy as np

    return x if x.dtype.kind in "fc" else x.astype(np.float64)


def _sum_squares(x: np.ndarray) -> float:
    import numpy as np

    if x.dtype.kind == "c":
        x = np.abs(x)
    return float(np.einsum("i,i->", x, x))


def _json_number(value: float) -> float | str:
    """JSON has no inf: an error that overflows float64 is reported as the string "inf"."""
    return value if math.isfinite(value) else str(value)


# -- widening ------------------------------------------------------------------------------------


def widen(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Raw elements (`tensormap.raw_dtype`) as float64, complex128, int64 or (uint64) themselves."""
    import numpy as np

    kind = DTYPES[dtype].kind
    if dtype == "bfloat16":  # the upper half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if dtype.startswith("float8"):
        return np.asarray(_float8_values(dtype)[raw])
    if dtype == "complex32":  # float16 (real, imaginary) pairs
        out = np.empty(len(raw), np.complex128)
        out.real, out.imag = raw[:, 0], raw[:, 1]
        return out
    if kind == "complex":
        return raw.astype(np.complex128, copy=False)
    if kind == "float":
        return raw.astype(np.float64, copy=False)
    if dtype == "uint64":
        return raw
    return raw.astype(np.int64, copy=False)


@cache
def _float8_values(dtype: str) -> np.ndarray:
    """The value of each of the 256 codes, as torch decodes them (torch is only needed here)."""
    import torch

    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    return codes.view(getattr(torch, dtype)).to(torch.float64).numpy()


def has_nan(raw: np.ndarray, dtype: str) -> bool:
    """Whether raw elements include a NaN."""
    import numpy as np

    kind = DTYPES[dtype].kind
    if kind not in ("float", "complex"):
        return False
    if raw.dtype.kind in "fc":
        values = raw.view(raw.real.dtype) if raw.dtype.kind == "c" else raw
        return not math.isfinite(float(values.max())) and bool(np.isnan(values).any())  # max: one cheap screen
    if dtype == "bfloat16":
        return bool((((raw & 0x7F80) == 0x7F80) & ((raw & 0x007F) != 0)).any())
    return bool(np.isnan(_float8_values(dtype)[raw]).any())
