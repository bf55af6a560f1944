"""What `optimizer` prints."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ckpttool.render.tables import fit_table
from ckpttool.render.text import (
    compact,
    grouped,
    key_values,
    number_text,
    plural,
    shape_text,
    to_csv,
    to_json,
)

if TYPE_CHECKING:  # only for annotations: JSON output must not pay for importing every op
    from ckpttool.ops.inspect import OptimizerReport


def optimizer_output(
    path: str, reports: list[OptimizerReport], fmt: str, width: int | None = None, beside: Sequence[str] = ()
) -> str:
    """`beside`: optimizer files next to the weights of a folder that holds none itself."""
    if fmt == "json":
        return to_json({"path": path, "optimizers": [_optimizer_json(r) for r in reports]})
    if fmt == "csv":
        rows = [
            (r.path, r.type, s.index, s.name, _step_csv(s.step), _state_tensors(s.tensors))
            for r in reports
            for s in r.state
        ]
        return to_csv(("optimizer", "type", "index", "name", "step", "tensors"), rows)
    if not reports and beside:
        lines = ["no optimizer state in the folder's weights; beside them:"]
        lines += [f"  ckpttool optimizer {shlex.quote(p)}" for p in beside]
        return "\n".join(lines)
    if not reports:
        return "no optimizer state in this file"
    return "\n\n".join(_optimizer_block(r, width) for r in reports)


def _step_csv(step: object) -> object:
    # Adam keeps its step count in a float32 tensor: 5.0 is the count 5, as the table shows it.
    return int(step) if isinstance(step, float) and step.is_integer() else step


def _optimizer_json(r: OptimizerReport) -> dict[str, object]:
    return {
        "path": r.path,
        "type": r.type,
        "inferred": r.inferred,
        "names": r.names,
        "param_groups": r.param_groups,
        "state": [
            {"index": s.index, "name": s.name, "step": s.step, "tensors": s.tensors, "values": s.values}
            for s in r.state
        ],
        "notes": r.notes,
    }


def _optimizer_block(r: OptimizerReport, width: int | None = None) -> str:
    names = {"model": "from --model", "file": "guessed from the file's weights", "keys": "the state's own keys"}.get(
        r.names or "", "not resolved"
    )
    pairs: list[tuple[str, object]] = [("optimizer", r.path), ("type", f"{r.type or 'unknown'} (inferred)")]
    pairs += [("names", names), ("param groups", len(r.param_groups))]
    lines = [key_values(pairs, width)]
    if r.param_groups:
        lines.append(_hyper_parameter_table(r.param_groups, width))
    state = [(s.index, s.name or "", number_text(s.step), _state_tensors(s.tensors)) for s in r.state]
    if state:
        lines.append(fit_table(("index", "name", "step", "state tensors"), state, width, shrink=(1,), wrap=(3,)))
    lines.extend(key_values([("note", n)], width) for n in r.notes)
    return "\n\n".join(lines)


def _hyper_parameter_table(groups: list[dict[str, Any]], width: int | None) -> str:
    """One row per hyper-parameter, one column per group: a dozen names stay readable,
    and groups that differ stand side by side. Groups past the width are counted, not cut."""
    hyper = sorted({k for g in groups for k in g if k != "params"})
    columns = [[grouped(len(g.get("params") or [])), *(_hyper_value(g, k) for k in hyper)] for g in groups]
    names = ["params", *hyper]
    label_width = max(len("hyper-parameter"), *(len(n) for n in names))
    shown = len(columns)
    if width is not None:
        used = label_width
        for i, column in enumerate(columns):
            used += 2 + max(len(f"group {i}"), *(len(c) for c in column))
            if used > width and i > 0:
                shown = i
                break
    headers = ["hyper-parameter", *(f"group {i}" for i in range(shown))]
    body = [[name, *(column[row] for column in columns[:shown])] for row, name in enumerate(names)]
    table = fit_table(headers, body, width, shrink=tuple(range(1, shown + 1)))
    if shown < len(columns):
        note = f"({plural(len(columns) - shown, 'more group')} not shown; --format json lists every group)"
        table += "\n" + (note if width is None or len(note) <= width else note.split(";")[0] + ")")
    return table


def _hyper_value(group: dict[str, Any], key: str) -> str:
    if key not in group:
        return "-"
    value = group[key]
    return number_text(value) if isinstance(value, float) else compact(value, 60)


def _state_tensors(tensors: dict[str, dict[str, Any]]) -> str:
    return "; ".join(f"{k} {shape_text(t['shape'])} {t['dtype']}" for k, t in tensors.items())
