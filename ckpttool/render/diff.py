"""What `diff` prints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckpttool.render.tables import fit_table
from ckpttool.render.text import (
    compact,
    grouped,
    key_values,
    number_text,
    percent_text,
    plural,
    shape_text,
    to_csv,
    to_json,
)

if TYPE_CHECKING:  # only for annotations: JSON output must not pay for importing every op
    from ckpttool.ops.compare import DiffReport


def diff_output(report: DiffReport, fmt: str, width: int | None = None) -> str:
    rows = _diff_rows(report)
    if fmt == "json":
        return to_json(
            {
                "a": report.a,
                "b": report.b,
                "identical": report.identical,
                "values_compared": report.values_compared,
                "only_in_a": report.only_in_a,
                "only_in_b": report.only_in_b,
                "shape_mismatch": report.shape_mismatch,
                "dtype_mismatch": report.dtype_mismatch,
                "value_mismatch": report.value_mismatch,
                "entries_mismatch": report.entries_mismatch,
                "equal": report.equal,
                "keys_only": report.keys_only,
                "ignore_dtype": report.ignore_dtype,
            }
        )
    if fmt == "csv":
        return to_csv(_DIFF_COLUMNS, rows)
    summary = key_values(_diff_summary(report), width)
    return summary + ("\n\n" + fit_table(_DIFF_COLUMNS, rows, width, shrink=(0,), wrap=(2,)) if rows else "")


_DIFF_COLUMNS = ("key", "difference", "detail")


def _diff_summary(report: DiffReport) -> list[tuple[str, object]]:
    pairs: list[tuple[str, object]] = [("a", report.a), ("b", report.b)]
    if report.values_compared:
        pairs += [
            ("result", _diff_result(report)),
            ("equal tensors", grouped(report.equal)),
        ]
    else:
        result = "DIFFERENT" if report.differs else "keys, shapes and dtypes match"
        pairs += [("result", f"{result} (values not compared)"), ("matching tensors", grouped(report.equal))]
    if report.ignore_dtype and report.dtype_mismatch:
        ignored = plural(len(report.dtype_mismatch), "tensor")
        pairs.append(("dtypes", f"{ignored} of another dtype, compared by value (--ignore-dtype)"))
    return pairs


def _diff_result(report: DiffReport) -> str:
    """IDENTICAL only for an exact comparison; within a tolerance the values are EQUAL."""
    if not report.identical:
        return "DIFFERENT"
    tolerance = report.tolerance
    if tolerance.exact:
        return "IDENTICAL"
    return f"EQUAL within atol {tolerance.atol:g}, rtol {tolerance.rtol:g} (as torch.allclose)"


def _diff_rows(report: DiffReport) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    rows += [(k, "only in a", "") for k in report.only_in_a]
    rows += [(k, "only in b", "") for k in report.only_in_b]
    rows += [(m["key"], "shape", f"{shape_text(m['a'])} vs {shape_text(m['b'])}") for m in report.shape_mismatch]
    if not report.ignore_dtype:
        rows += [(m["key"], "dtype", f"{m['a']} vs {m['b']}") for m in report.dtype_mismatch]
    rows += [(m["key"], "values", _value_detail(m)) for m in report.value_mismatch]
    rows += [(m["key"], "entry", _entry_pair(m)) for m in report.entries_mismatch]
    return rows


def _entry_pair(m: dict[str, Any]) -> str:
    from ckpttool.npvalues import paired_array_text

    pair = None if m.get("absent") else paired_array_text(m["a"], m["b"], 30)
    return f"{pair[0]} vs {pair[1]}" if pair else f"{_entry(m, 'a')} vs {_entry(m, 'b')}"


def _value_detail(m: dict[str, Any]) -> str:
    if m.get("no_data"):
        return f"{m['no_data']} holds no values (a meta tensor): nothing to compare"
    if m["mismatched"] is None:
        return "stored bytes differ (no arithmetic for this dtype)"
    share = f"differ in {m['mismatched']:,} of {plural(m['numel'], 'element')} ({percent_text(m['share'])}%)"
    errors = (
        f"max abs {number_text(m['max_abs'])}, max rel {number_text(m['max_rel'])}, rel L2 {number_text(m['rel_l2'])}"
    )
    return f"{share}; {errors}"


def _entry(m: dict[str, Any], side: str) -> str:
    if m.get("absent") == side:
        return "(absent)"
    value = m[side]
    text = compact(value, 30)
    if len(text) < 30 or not isinstance(value, (dict, list)):
        return text
    if isinstance(value, dict):  # a whole container said by its size: `{2 entries}`
        return "{" + plural(len(value), "entry", "entries") + "}"
    return f"[{plural(len(value), 'item')}]"
