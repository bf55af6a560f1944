"""`diff`: two checkpoints of any formats, compared key by key.

Keys only in A or B, shape and dtype mismatches, value mismatches with the largest
absolute and relative error, and differing non-tensor entries. Values compare as
`torch.equal` does by default (NaN differs from NaN unless `equal_nan`), or as
`torch.allclose(rtol, atol)` when a tolerance is given. Tensors are streamed one
pair at a time; equal bytes are recognised without torch, chunk by chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpttool.checkpoint import TensorRef
from ckpttool.dtypes import DTYPES
from ckpttool.errors import about
from ckpttool.formats import read_checkpoint
from ckpttool.ops.inspect import entries
from ckpttool.tensordata import ByteRange, chunks, direct_range, load_tensor, read_span
from ckpttool.weights import all_tensors, find_weights

if TYPE_CHECKING:
    import torch

CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Tolerance:
    atol: float = 0.0
    rtol: float = 0.0
    equal_nan: bool = False

    @property
    def exact(self) -> bool:
        return self.atol == 0 and self.rtol == 0


@dataclass
class DiffReport:
    a: str
    b: str
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    shape_mismatch: list[dict[str, Any]] = field(default_factory=list)
    dtype_mismatch: list[dict[str, Any]] = field(default_factory=list)
    value_mismatch: list[dict[str, Any]] = field(default_factory=list)
    entries_mismatch: list[dict[str, Any]] = field(default_factory=list)
    equal: int = 0
    keys_only: bool = False

    @property
    def identical(self) -> bool:
        return not (
            self.only_in_a or self.only_in_b or self.shape_mismatch or self.dtype_mismatch
            or self.value_mismatch or self.entries_mismatch
        )  # fmt: skip


@dataclass
class DiffOptions:
    tolerance: Tolerance = field(default_factory=Tolerance)
    keys_only: bool = False
    every_tensor: bool = False  # all tensors (optimizer state too), not only the weights
    root_a: str | None = None
    root_b: str | None = None


def diff(path_a: str, path_b: str, options: DiffOptions, progress: Any = None) -> DiffReport:
    a, b = read_checkpoint(path_a), read_checkpoint(path_b)
    with about(path_a):
        tensors_a, root_a = _tensors(a.root, options.every_tensor, options.root_a)
    with about(path_b):
        tensors_b, root_b = _tensors(b.root, options.every_tensor, options.root_b)
    report = DiffReport(path_a, path_b, keys_only=options.keys_only)
    report.only_in_a = [k for k in tensors_a if k not in tensors_b]
    report.only_in_b = [k for k in tensors_b if k not in tensors_a]
    common = [k for k in tensors_a if k in tensors_b]
    if progress is not None:
        progress.start(sum(tensors_a[k].nbytes + tensors_b[k].nbytes for k in common) * (not options.keys_only))
    for key in common:
        _compare(key, tensors_a[key], tensors_b[key], options, report)
        if progress is not None and not options.keys_only:
            progress.advance(tensors_a[key].nbytes + tensors_b[key].nbytes)
    read_scalars = not options.keys_only  # a saved 0-dim loss is tensor data too
    report.entries_mismatch = _entries_mismatch(a.root, root_a, b.root, root_b, read_scalars)
    return report


def _tensors(root: Any, every: bool, override: str | None) -> tuple[dict[str, TensorRef], str | None]:
    weights = find_weights(root, override)
    named = all_tensors(root) if every else weights.tensors
    return {t.key: t.tensor for t in named}, weights.root


def _compare(key: str, a: TensorRef, b: TensorRef, options: DiffOptions, report: DiffReport) -> None:
    if a.shape != b.shape:
        report.shape_mismatch.append({"key": key, "a": list(a.shape), "b": list(b.shape)})
        return
    if a.dtype != b.dtype:
        report.dtype_mismatch.append({"key": key, "a": a.dtype, "b": b.dtype})
    if options.keys_only:
        if a.dtype == b.dtype:
            report.equal += 1
        return
    result = compare_values(a, b, options.tolerance)
    if result is None:
        if a.dtype == b.dtype:
            report.equal += 1
    else:
        report.value_mismatch.append({"key": key, **result})


def compare_values(a: TensorRef, b: TensorRef, tolerance: Tolerance) -> dict[str, Any] | None:
    """None when the values agree; otherwise the largest absolute and relative errors."""
    if a.layout != "strided" or b.layout != "strided":
        return _compare_parts(a, b, tolerance)
    if not _comparable(a.dtype) or not _comparable(b.dtype):
        # quantized and packed types: only identical bytes count as equal
        same = a.dtype == b.dtype and read_span(a)[0] == read_span(b)[0]
        return None if same else {"max_abs": None, "max_rel": None, "mismatched": None}
    if tolerance.exact and a.dtype == b.dtype:
        span_a, span_b = direct_range(a), direct_range(b)
        if span_a is not None and span_b is not None and _equal_without_nan(span_a, span_b, a.dtype):
            return None  # identical bits and no NaN: equal as torch.equal sees it
    return _torch_compare(load_tensor(a), load_tensor(b), tolerance)


def _compare_parts(a: TensorRef, b: TensorRef, tolerance: Tolerance) -> dict[str, Any] | None:
    """Sparse tensors agree when their layouts and every part (indices, values) agree."""
    parts_a, parts_b = (a.extra or {}).get("parts", []), (b.extra or {}).get("parts", [])
    if a.layout != b.layout or len(parts_a) != len(parts_b):
        return {"max_abs": None, "max_rel": None, "mismatched": None}
    for part_a, part_b in zip(parts_a, parts_b, strict=True):
        if part_a.shape != part_b.shape:
            return {"max_abs": None, "max_rel": None, "mismatched": None}
        result = compare_values(part_a, part_b, tolerance)
        if result is not None:
            return result
    return None


def _equal_without_nan(a: ByteRange, b: ByteRange, dtype: str) -> bool:
    """Same bytes and no NaN among them, checked chunk by chunk without torch."""
    if a.size != b.size:
        return False
    for block_a, block_b in zip(chunks(a), chunks(b), strict=True):
        if block_a != block_b or has_nan(block_a, dtype) is not False:
            return False
    return True


def has_nan(block: bytes, dtype: str) -> bool | None:
    """Whether raw little-endian elements include a NaN (None: cannot tell here)."""
    kind = DTYPES[dtype].kind
    if kind not in ("float", "complex"):
        return False
    import numpy as np

    native = {
        "float16": np.float16,
        "float32": np.float32,
        "float64": np.float64,
        "complex64": np.float32,
        "complex128": np.float64,
    }
    if dtype in native:
        return bool(np.isnan(np.frombuffer(block, native[dtype])).any())
    if dtype == "bfloat16":
        bits = np.frombuffer(block, np.uint16)
        return bool((((bits & 0x7F80) == 0x7F80) & ((bits & 0x007F) != 0)).any())
    bits = np.frombuffer(block, np.uint8)
    patterns = {
        "float8_e4m3fn": (bits & 0x7F) == 0x7F,
        "float8_e5m2": ((bits & 0x7C) == 0x7C) & ((bits & 0x03) != 0),
        "float8_e4m3fnuz": bits == 0x80,
        "float8_e5m2fnuz": bits == 0x80,
        "float8_e8m0fnu": bits == 0xFF,
    }
    return bool(patterns[dtype].any()) if dtype in patterns else None


def _torch_compare(a: torch.Tensor, b: torch.Tensor, tolerance: Tolerance) -> dict[str, Any] | None:
    import torch

    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    agree, max_abs, max_rel, mismatched = True, 0.0, 0.0, 0
    for xa, xb in zip(flat_a.split(CHUNK_ELEMENTS), flat_b.split(CHUNK_ELEMENTS), strict=True):
        da, db = _wide(xa), _wide(xb)
        ok = _exact_integers(xa, xb) if _both_integer(xa, xb) and tolerance.exact else _close(da, db, tolerance)
        mismatched += int((~ok).sum())
        agree &= bool(ok.all())
        both = torch.isfinite(da) & torch.isfinite(db)
        if both.any():
            error = (da[both] - db[both]).abs()
            max_abs = max(max_abs, float(error.max()))
            scale = db[both].abs()
            nonzero = scale > 0
            if nonzero.any():
                max_rel = max(max_rel, float((error[nonzero] / scale[nonzero]).max()))
    if agree:
        return None
    return {"max_abs": _json_number(max_abs), "max_rel": _json_number(max_rel), "mismatched": mismatched}


def _json_number(value: float) -> float | str:
    """JSON has no inf: an error that overflows float64 is reported as the string "inf"."""
    return value if math.isfinite(value) else str(value)


def _both_integer(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not (a.is_floating_point() or a.is_complex() or b.is_floating_point() or b.is_complex())


def _exact_integers(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Integer equality in the integers' own bits: float64 cannot tell 2**60 from 2**60 + 1."""
    import torch

    if a.dtype == b.dtype == torch.uint64:
        return a.view(torch.int64) == b.view(torch.int64)
    return _wide(a) == _wide(b)


def _close(a: torch.Tensor, b: torch.Tensor, tolerance: Tolerance) -> torch.Tensor:
    """Element-wise torch.equal / torch.allclose semantics."""
    import torch

    if tolerance.exact:
        ok = a == b
    else:
        ok = torch.isclose(a, b, rtol=tolerance.rtol, atol=tolerance.atol)
    if tolerance.equal_nan:
        ok |= torch.isnan(a) & torch.isnan(b)
    return ok


def _wide(x: torch.Tensor) -> torch.Tensor:
    """A dtype every comparison is defined for: complex128, float64, or exact int64."""
    import torch

    if x.is_complex():
        return x.to(torch.complex128)
    if x.is_floating_point():
        return x.to(torch.float64)
    if x.dtype == torch.uint64:
        return x.to(torch.float64)  # no wider integer type: errors beyond 2**53 round (equality does not)
    return x.to(torch.int64)


def _comparable(dtype: Any) -> bool:
    name = str(dtype).removeprefix("torch.")
    return DTYPES.get(name) is not None and DTYPES[name].kind not in ("quantized", "other")


def _entries_mismatch(
    a: Any, root_a: str | None, b: Any, root_b: str | None, read_scalars: bool
) -> list[dict[str, Any]]:
    """Non-tensor entries (epoch, loss, hyper-parameters) that both files hold but differ.

    A file without any entries (safetensors, a bare state_dict) is compared on its
    tensors alone, so a checkpoint still equals its converted weights.
    """
    ea, eb = entries(a, root_a, read_scalars), entries(b, root_b, read_scalars)
    if not ea or not eb:
        return []
    keys = list(dict.fromkeys([*ea, *eb]))
    return [{"key": k, "a": ea.get(k), "b": eb.get(k)} for k in keys if ea.get(k) != eb.get(k)]
