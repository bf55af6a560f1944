"""`diff`: two checkpoints of any formats, compared key by key.

Keys only in A or B, shape and dtype mismatches, value mismatches (how many elements
differ, the largest absolute and relative errors, the relative L2 error), and
differing non-tensor entries. Values compare as `torch.equal` does by default, or as
`torch.allclose(rtol, atol)` with a tolerance (see `compare/values.py`); with `ignore_dtype`
tensors of different dtypes compare by value and their dtypes are not a difference.

Which entries: by default the top-level values that are not weights (epoch, loss,
hyper-parameters, each compared whole); with `every_tensor` (`--all`) every tensor
anywhere is compared as a tensor and every other leaf outside the weights (optimizer
`param_groups` hyper-parameters, nested configs) as an entry, each difference once.
Entries count only when both files have some, so a training checkpoint still equals
its exported weights.

`keys_only` reads no tensor data: the report then says whether keys, shapes and dtypes
match, never that the files are identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from ckpttool.checkpoint import PickledObject, TensorRef
from ckpttool.errors import about
from ckpttool.formats import read_checkpoint
from ckpttool.ops.compare.entries import same_entry
from ckpttool.ops.compare.equivalence import equivalent
from ckpttool.ops.compare.values import Tolerance, compare_values
from ckpttool.ops.convert.unstack import unstack_checkpoint
from ckpttool.ops.inspect.report import entry_values, jsonable
from ckpttool.tensormap import MappedFiles
from ckpttool.weights import all_tensors, find_weights, walk

if TYPE_CHECKING:
    from ckpttool.progress import Progress

__all__ = ["DiffOptions", "DiffReport", "Tolerance", "diff"]


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
    equal: int = 0  # tensors that agree in everything compared
    keys_only: bool = False
    ignore_dtype: bool = False
    tolerance: Tolerance = field(default_factory=Tolerance)

    @property
    def values_compared(self) -> bool:
        return not self.keys_only

    @property
    def differs(self) -> bool:
        """Any difference found (dtypes count unless ignored)."""
        dtypes = self.dtype_mismatch and not self.ignore_dtype
        return bool(
            self.only_in_a or self.only_in_b or self.shape_mismatch or dtypes
            or self.value_mismatch or self.entries_mismatch
        )  # fmt: skip

    @property
    def identical(self) -> bool | None:
        """False when something differs; None when nothing does but values were not compared."""
        if self.differs:
            return False
        return None if self.keys_only else True


@dataclass
class DiffOptions:
    tolerance: Tolerance = field(default_factory=Tolerance)
    keys_only: bool = False
    every_tensor: bool = False  # all tensors (optimizer state too) and nested entries
    root_a: str | None = None
    root_b: str | None = None
    ignore_dtype: bool = False
    unstack: bool = False  # Megatron-Core's stacked layers, one tensor per layer (convert/unstack.py)


def diff(path_a: str, path_b: str, options: DiffOptions, progress: Progress | None = None) -> DiffReport:
    a, b = read_checkpoint(path_a), read_checkpoint(path_b)
    if options.unstack:
        unstack_checkpoint(a)
        unstack_checkpoint(b)
    with about(path_a):
        tensors_a, root_a = _tensors(a.root, options.every_tensor, options.root_a)
    with about(path_b):
        tensors_b, root_b = _tensors(b.root, options.every_tensor, options.root_b)
    report = DiffReport(path_a, path_b, keys_only=options.keys_only, ignore_dtype=options.ignore_dtype)
    report.tolerance = options.tolerance
    report.only_in_a = [k for k in tensors_a if k not in tensors_b]
    report.only_in_b = [k for k in tensors_b if k not in tensors_a]
    common = [k for k in tensors_a if k in tensors_b]
    if progress is not None:
        progress.start(sum(tensors_a[k].nbytes + tensors_b[k].nbytes for k in common) * (not options.keys_only))
    with MappedFiles() as files:
        for key in common:
            _compare(key, tensors_a[key], tensors_b[key], options, report, files)
            if progress is not None and not options.keys_only:
                progress.advance(tensors_a[key].nbytes + tensors_b[key].nbytes)
    if options.every_tensor:
        leaves_a, leaves_b = nested_entries(a.root, root_a), nested_entries(b.root, root_b)
        report.entries_mismatch = _differing(leaves_a, leaves_b, equivalent)
        _fill_containers(report.entries_mismatch, {"a": a.root, "b": b.root})
    else:
        read_scalars = not options.keys_only  # a saved 0-dim loss is tensor data too
        top_a, top_b = entry_values(a.root, root_a), entry_values(b.root, root_b)
        same = partial(same_entry, read_scalars=read_scalars)
        report.entries_mismatch = _differing(top_a, top_b, same, read_scalars)
    return report


def _tensors(root: Any, every: bool, override: str | None) -> tuple[dict[str, TensorRef], str | None]:
    weights = find_weights(root, override)
    named = all_tensors(root) if every else weights.tensors
    return {t.key: t.tensor for t in named}, weights.root


def _compare(
    key: str, a: TensorRef, b: TensorRef, options: DiffOptions, report: DiffReport, files: MappedFiles
) -> None:
    if a.shape != b.shape:
        report.shape_mismatch.append({"key": key, "a": list(a.shape), "b": list(b.shape)})
        return
    same_dtype = a.dtype == b.dtype
    if not same_dtype:
        report.dtype_mismatch.append({"key": key, "a": a.dtype, "b": b.dtype})
    counts_as_equal = same_dtype or options.ignore_dtype
    if options.keys_only:
        report.equal += counts_as_equal
        return
    result = compare_values(a, b, options.tolerance, files)
    if result is not None:
        report.value_mismatch.append({"key": key, **result})
    else:
        report.equal += counts_as_equal


# -- entries ------------------------------------------------------------------------------------


def nested_entries(root: Any, weights_root: str | None) -> dict[str, Any]:
    """Every non-tensor leaf outside the weights, by dotted path: numbers, strings, None,
    empty containers and the class of each pickled object (`path.__class__`)."""
    if weights_root == "":
        return {}  # the whole file is weights
    out: dict[str, Any] = {}
    for path, node in walk(root):
        if not path or isinstance(node, TensorRef) or _within(path, weights_root):
            continue
        if isinstance(node, PickledObject):
            out[f"{path}.__class__"] = node.cls
        elif not isinstance(node, (dict, list, tuple)) or not node:
            out[path] = node
    return out


def _fill_containers(rows: list[dict[str, Any]], roots: dict[str, Any]) -> None:
    """An empty container in one file where the other holds a full one (an optimizer's
    `state` before its first step and after) is no absent entry: show what the other holds."""
    for row in rows:
        side = row.get("absent")
        if side is None:
            continue
        node = next((node for path, node in walk(roots[side]) if path == row["key"]), None)
        if isinstance(node, (dict, list, tuple)) and node:
            row[side] = jsonable(node)
            del row["absent"]


def _within(path: str, root: str | None) -> bool:
    return root is not None and (path == root or path.startswith(root + "."))


def _differing(
    a: dict[str, Any], b: dict[str, Any], same: Callable[[Any, Any], bool], read_scalars: bool = True
) -> list[dict[str, Any]]:
    """Entries that differ, in file order, each once; one without entries compares with nothing.
    Top-level values compare as `same_entry` says (as their JSON would, dict order aside, but
    pickled objects and calls such as numpy arrays whole, bytes included); nested leaves as
    `equivalent` says (1 and 1.0 differ there, NaN equals NaN). Rows show values as JSON."""
    if not a or not b:
        return []

    def shown(value: Any) -> Any:
        return jsonable(value, read_scalars)

    rows = []
    for key in dict.fromkeys([*a, *b]):
        if key not in b:
            rows.append({"key": key, "a": shown(a[key]), "b": None, "absent": "b"})
        elif key not in a:
            rows.append({"key": key, "a": None, "b": shown(b[key]), "absent": "a"})
        elif not same(a[key], b[key]):
            rows.append({"key": key, "a": shown(a[key]), "b": shown(b[key])})
    return rows
