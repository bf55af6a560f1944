"""What `scan` prints: verdict blocks, global rows, allowlist lines, SARIF."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ckpttool.render.tables import fit_table
from ckpttool.render.text import key_values, output_width, to_csv, to_json, to_table, wrap_list, wrap_text

if TYPE_CHECKING:  # only for annotations: JSON output must not pay for importing every op
    from ckpttool.ops.compare import CheckReport, Severity
    from ckpttool.ops.safety import FileScan, ScanEntry, UnreadableFile
    from ckpttool.pickle.judge import Verdict
    from ckpttool.pickle.weightsonly import Result
    from ckpttool.sarif import Finding, Level, RuleId

# 2 (from 1): unknown-call, weights_only apart from the verdict, calls, allowed names, and
# an unreadable path as an entry of files[] (verdict unreadable, error).
SCAN_SCHEMA_VERSION = 2
_SCAN_ORDER: dict[Verdict, int] = {"dangerous": 0, "unknown-call": 1, "needs-allowlist": 2, "safe": 3}
_WEIGHTS_ONLY_TEXT: dict[Result, str] = {
    "loads": "loads as is",
    "loads-after-allowlist": "loads after the add_safe_globals line below",
    "refused": "refused",
    "not-applicable": "not applicable",
}


def scan_json(entries: Sequence[ScanEntry], error: tuple[str | None, str] | None = None) -> str:
    """`files` has every path in order; `error` (as every command's JSON error) when none could be read."""
    payload: dict[str, object] = {"files": [_scan_entry_json(e) for e in entries]}
    if error is not None:
        payload["error"] = {"path": error[0], "message": error[1], "exit_code": 2}
    return to_json(payload, version=SCAN_SCHEMA_VERSION)


def _scan_entry_json(e: ScanEntry) -> dict[str, object]:
    from ckpttool.ops.safety import FileScan

    if isinstance(e, FileScan):
        return _scan_file_json(e)
    # The fields of a scanned file, empty, so that consumers read one shape.
    return {
        "path": e.path,
        "format": None,
        "verdict": e.verdict,
        "error": e.error,
        "weights_only": None,
        "pickles": 0,
        "globals": [],
        "allowlist": None,
        "imports": [],
        "problems": [],
        "allowed": {},
        "notes": [],
    }


def _scan_file_json(r: FileScan) -> dict[str, object]:
    return {
        "path": r.path,
        "format": r.format,
        "verdict": r.verdict,
        "error": None,
        "weights_only": {"result": r.weights_only.result, "reasons": r.weights_only.reasons},
        "pickles": r.pickles,
        "globals": [
            {
                "module": g.module,
                "name": g.name,
                "uses": g.uses,
                "verdict": g.verdict,
                "reason": g.reason,
                "calls": g.calls,
                "allowed_by": g.allowed_by,
            }
            for g in r.globals
        ],
        "allowlist": r.allowlist,
        "imports": r.imports,
        "problems": r.problems,
        "allowed": r.allowed,
        "notes": r.notes,
    }


def scan_csv(entries: Sequence[ScanEntry]) -> str:
    from ckpttool.ops.safety import FileScan

    rows: list[tuple[str, ...]] = []
    for r in entries:
        if not isinstance(r, FileScan):  # unreadable: the reason in the last column
            rows.append((r.path, "", r.verdict, "", "", "", "", r.error))
            continue
        head = (r.path, r.format, r.verdict, r.weights_only.result)
        if not r.globals:
            rows.append((*head, "", "", "", ""))
        rows.extend((*head, g.qualname, " ".join(g.uses), g.verdict, "") for g in r.globals)
    return to_csv(("path", "format", "verdict", "weights_only", "global", "uses", "global_verdict", "error"), rows)


def scan_table(entries: Sequence[ScanEntry]) -> str:
    from ckpttool.ops.safety import FileScan

    blocks = [_scan_block(r) if isinstance(r, FileScan) else _unreadable_block(r) for r in entries]
    if len(entries) > 1:
        blocks.append(_summary_table(entries))
    return "\n\n".join(blocks)


def _summary_table(entries: Sequence[ScanEntry]) -> str:
    """One row per entry. Where full paths do not fit, they are shown under the folder
    they share, said once above the table, so a cut keeps what tells files apart."""
    from ckpttool.ops.safety import FileScan

    width = output_width()
    headers = ("file", "format", "verdict", "weights_only", "pickles")
    align = ("left", "left", "left", "left", "right")

    def rows(name: Callable[[str], str]) -> list[tuple[object, ...]]:
        return [
            (name(r.path), r.format, r.verdict, r.weights_only.result, r.pickles)
            if isinstance(r, FileScan)
            else (name(r.path), "", r.verdict, "", "")
            for r in entries
        ]

    whole = to_table(headers, rows(str), align)
    base = _shared_folder([r.path for r in entries])
    if width is None or max(map(len, whole.splitlines())) <= width or not base:
        return fit_table(headers, rows(str), width, align=align, whole="--format json", keys_above=True, paths=True)
    above = "\n".join(wrap_text(f"files under {base}{os.sep}", width))
    relative = rows(lambda p: os.path.relpath(p, base))
    table = fit_table(headers, relative, width, align=align, whole="--format json", keys_above=True, paths=True)
    return f"{above}\n{table}"


def _shared_folder(paths: list[str]) -> str:
    """The folder every path lies in ('' when they share none, or only the current one)."""
    try:
        shared = os.path.commonpath([os.path.dirname(os.path.normpath(p)) or "." for p in paths])
    except ValueError:  # absolute and relative paths mixed
        return ""
    return "" if shared in ("", ".", os.sep) else shared


def _unreadable_block(r: UnreadableFile) -> str:
    # The reason is a line that wraps, never cut.
    return key_values([("file", r.path), ("verdict", r.verdict.upper()), ("error", r.error)], output_width())


def _weights_only_text(r: FileScan) -> str:
    if r.weights_only.result == "loads-after-allowlist" and r.allowlist and r.allowlist.startswith("import "):
        return "loads after the import below"  # `import torch.distributed.tensor` allowlists DTensor's classes
    return _WEIGHTS_ONLY_TEXT[r.weights_only.result]


def _scan_block(r: FileScan) -> str:
    pairs: list[tuple[str, object]] = [("file", r.path), ("format", r.format), ("pickles", r.pickles)]
    pairs += [("verdict", r.verdict.upper()), ("weights_only", _weights_only_text(r))]
    if r.allowed:
        pairs.append(("allowed", [f"{name} ({source})" for name, source in sorted(r.allowed.items())]))
    width = output_width()
    lines = [key_values(pairs, width)]
    for reason in r.weights_only.reasons:
        lines.extend(wrap_text(reason, width, indent="    ", first="  "))
    if r.globals:
        body = sorted(((g.qualname, ", ".join(g.uses), g.verdict, g.reason) for g in r.globals), key=_verdict_order)
        lines.extend(_globals_lines(body, width))
    from ckpttool.pickle.judge import unknown_calls_by_allow

    for name, calls in unknown_calls_by_allow(r.globals).items():  # one hint for a TorchScript archive's classes
        for call in calls:
            lines.extend(wrap_text(call, width, indent="  ", first="unknown call: "))
        lines.extend(
            wrap_text(f"to allow it: --allow {name}, or [tool.ckpttool] allow in pyproject.toml", width, "    ", "  ")
        )
    for label, texts in (("problem: ", r.problems), ("note: ", r.notes)):
        for text in texts:
            lines.extend(wrap_text(text, width, indent="  ", first=label))
    if r.allowlist:
        from ckpttool.pickle.weightsonly import allowlist_effect

        lines.append(allowlist_effect(r.weights_only.result))
        for statement in [*r.imports, r.allowlist]:
            lines.extend(python_lines(statement, width))
    return "\n".join(lines)


_HEADERS = ("global", "uses", "verdict", "why")
MIN_WHY_WIDTH = 24  # narrower, a reason takes more lines than a list entry does


def _globals_lines(body: list[tuple[str, str, Verdict, str]], width: int | None) -> list[str]:
    """The globals as a table while every name fits whole and the reasons keep a readable
    column; on a narrower terminal each global on lines of its own: its name whole, its
    verdict and uses, then why, indented."""
    beside = sum(max(len(_HEADERS[i]), *(len(row[i]) for row in body)) for i in range(3)) + 6  # 2 between columns
    if width is None or width - beside >= MIN_WHY_WIDTH:
        return [fit_table(_HEADERS, body, width, shrink=(0,), wrap=(3, 1))]
    lines = ["globals (verdict; uses), each with why:"]
    for name, uses, verdict, why in body:
        lines.extend(wrap_text(f"{name} ({verdict}; {uses})", width, indent="    ", first="  "))
        lines.extend(wrap_text(why, width, indent="      ", first="      "))
    return lines


def python_lines(statement: str, width: int | None, indent: str = "    ") -> list[str]:
    """An import statement or the `add_safe_globals([...])` line, or within `width` one
    name per wrapped line inside its brackets: still Python to paste as it is."""
    if statement.startswith("from ") and " import " in statement:
        head, _, rest = statement.partition(" import ")
        head, rest, close = f"{head} import (", f"{rest})", ")"
    else:
        head, bracket, rest = statement.partition("([")
        head, close = f"{head}{bracket}", "])"
    if width is None or len(indent + statement) <= width or not rest.endswith(close):
        return [indent + statement]
    names = wrap_list(rest[: -len(close)].split(", "), width - 2 * len(indent), whole=True)
    return [f"{indent}{head}", *(2 * indent + line for line in names), f"{indent}{close}"]


def _verdict_order(row: tuple[str, str, Verdict, str]) -> tuple[int, str]:
    return (_SCAN_ORDER.get(row[2], 4), row[0])


def scan_sarif(results: list[FileScan], unreadable: list[tuple[str, str]]) -> str:
    """One SARIF result per finding: each global that is not safe, each problem, each
    weights_only refusal, each unreadable file."""
    from ckpttool import sarif

    findings: list[Finding] = []
    for r in results:
        findings.extend(_scan_findings(r))
    findings.extend(sarif.Finding("CKPT006", path, message) for path, message in unreadable)
    return sarif.document(findings)


def check_sarif(reports: list[CheckReport]) -> str:
    """One SARIF result per check finding: errors under CKPT101, warnings and notes under CKPT102."""
    from ckpttool import sarif

    levels: dict[Severity, Level] = {"error": "error", "warning": "warning", "info": "note"}
    findings = [
        sarif.Finding(
            "CKPT101" if f.severity == "error" else "CKPT102",
            r.path,
            f"{f.check}: {f.message}" + (f" ({f.key})" if f.key else ""),
            levels.get(f.severity, "note"),
            {"check": f.check, **({"key": f.key} if f.key else {})},
        )
        for r in reports
        for f in r.findings
    ]
    return sarif.document(findings)


def _scan_findings(r: FileScan) -> list[Finding]:
    from ckpttool.sarif import Finding

    rules: dict[Verdict, RuleId] = {"dangerous": "CKPT001", "unknown-call": "CKPT003", "needs-allowlist": "CKPT004"}
    found: list[Finding] = []
    for g in sorted(r.globals, key=lambda g: (_SCAN_ORDER[g.verdict], g.qualname)):
        if g.verdict in rules:
            calls = f" Calls: {'; '.join(g.calls)}." if g.calls else ""
            message = f"{g.qualname} ({', '.join(g.uses)}): {g.verdict}: {g.reason}.{calls}"
            found.append(Finding(rules[g.verdict], r.path, message, properties={"global": g.qualname}))
    found.extend(Finding("CKPT002", r.path, p) for p in r.problems)
    if r.weights_only.result == "refused":
        reasons = "; ".join(r.weights_only.reasons)
        found.append(Finding("CKPT005", r.path, f"torch.load(weights_only=True) refuses this file: {reasons}"))
    return found
