"""What `check` prints, SARIF included."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckpttool.render.scan import python_lines
from ckpttool.render.tables import fit_table
from ckpttool.render.text import command_lines, grouped, key_values, output_width, plural, to_csv, to_json, wrap_text

if TYPE_CHECKING:  # only for annotations: JSON output must not pay for importing every op
    from ckpttool.ops.compare import CheckReport, Finding, Suggestion


CHECK_SCHEMA_VERSION = 2  # 2: one shape for one or many paths, unreadable files reported
CHECK_ROWS_PER_KIND = 10  # key findings of one kind a table shows in full; JSON and CSV list all
CHECK_ROWS_KEPT = 5  # shown before the row that counts the rest
CHECK_FIXES_SHOWN = 3


def check_output(reports: list[CheckReport], strict: bool, fmt: str) -> str:
    if fmt == "json":
        files = [_check_json(r, strict) for r in reports]
        return to_json({"ok": all(f["ok"] for f in files), "files": files}, version=CHECK_SCHEMA_VERSION)
    rows = [(r.path, f.check, f.severity, f.key or "", f.message) for r in reports for f in r.findings]
    if fmt == "csv":
        return to_csv(("path", "check", "severity", "key", "message"), rows)
    width = output_width()
    blocks = [_check_block(r, strict, width) for r in reports]
    if len(reports) > 1:
        blocks.append(_check_summary(reports, strict, width))
    return "\n\n".join(blocks)


def _check_json(r: CheckReport, strict: bool) -> dict[str, object]:
    keys = r.keys
    return {
        "path": r.path,
        "ok": r.ok(strict),
        "readable": r.readable,
        "findings": [
            {
                "check": f.check,
                "severity": f.severity,
                "key": f.key,
                "message": f.message,
                "remedy": None if f.remedy is None else {"label": f.remedy.label, "lines": f.remedy.lines},
            }
            for f in r.findings
        ],
        "keys": None if keys is None else {"root": keys.root, "in_file": keys.found, "matched": keys.found_matched},
        "missing": keys.missing if keys else [],
        "unexpected": keys.unexpected if keys else [],
        "shape_mismatch": keys.shape_mismatch if keys else [],
        "dtype_mismatch": keys.dtype_mismatch if keys else [],
        "allowed_missing": r.allowed_missing,
        "allowed_unexpected": r.allowed_unexpected,
        "allow_hint": r.allow_hint,
        "suggestions": [
            {
                "fix": s.fix,
                "option": s.option_text,
                "command": s.command,
                "fixes": s.fixes,
                "missing_after": s.missing_after,
                "unexpected_after": s.unexpected_after,
                "shape_mismatch_after": s.shape_mismatch_after,
                "passes": s.passes,
            }
            for s in r.suggestions
        ],
    }


def _check_result(r: CheckReport, strict: bool) -> str:
    if not r.readable:
        return "UNREADABLE"
    return "OK" if r.ok(strict) else "FAILED"


def _check_block(r: CheckReport, strict: bool, width: int | None) -> str:
    pairs: list[tuple[str, object]] = [("file", r.path), ("result", _check_result(r, strict))]
    if not r.readable:  # its one finding is the reason: a line that wraps, not a table that cuts it
        return key_values([*pairs, ("findings", "1 error"), ("error", r.findings[0].message)], width)
    if r.keys is not None:
        pairs.append(("keys", _keys_line(r)))
    counts = [plural(n, s, s if s == "info" else None) for s in ("error", "warning", "info") if (n := r.count(s))]
    pairs.append(("findings", ", ".join(counts) or "none"))
    if r.keys is not None and r.keys.found and not r.keys.found_matched and not r.suggestions:
        pairs.append(("note", "no key matches, and no rename or other root helps"))
    blocks = [key_values(pairs, width)]
    if r.allow_hint:
        hint = command_lines(" ".join(r.allow_hint), width)
        blocks.append("\n".join(["left out on purpose (a warm start)? accept them with:", *hint]))
    if r.suggestions:
        blocks.append(_fixes(r, width))
    if r.findings:
        body = _collapsed(r.findings)
        blocks.append(fit_table(("severity", "check", "key", "message"), body, width, shrink=(2,), wrap=(3,)))
    remedies = _remedies(r.findings, width)
    if remedies:
        blocks.append(remedies)
    return "\n\n".join(blocks)


def _remedies(findings: list[Finding], width: int | None) -> str:
    """What to paste for each finding that has a remedy, whole on lines of its own: the
    table may cut a message, never these (as scan prints its --allow and add_safe_globals lines)."""
    lines: list[str] = []
    for f in findings:
        if f.remedy is None:
            continue
        lines.extend(wrap_text(f.remedy.label, width, indent="  "))
        for line in f.remedy.lines:
            if line.startswith("ckpttool "):  # a command: shell continuations, still one to paste
                lines.extend(command_lines(line, width, indent="    "))
            else:
                lines.extend(python_lines(line, width))
    return "\n".join(lines)


def _keys_line(r: CheckReport) -> str:
    keys = r.keys
    assert keys is not None
    if not keys.found:
        return f"no weights in the file; {plural(len(keys.missing), 'key')} missing"
    parts = [
        _allowed_count(len(keys.missing), len(r.allowed_missing), "missing"),
        _allowed_count(len(keys.unexpected), len(r.allowed_unexpected), "unexpected"),
        plural(len(keys.shape_mismatch), "size mismatch", "size mismatches") if keys.shape_mismatch else "",
        f"{len(keys.dtype_mismatch):,} of another dtype" if keys.dtype_mismatch else "",
    ]
    details = ", ".join(p for p in parts if p)
    return f"matched {keys.found_matched:,} of {plural(keys.found, 'key')}" + (f"; {details}" if details else "")


def _allowed_count(n: int, allowed: int, kind: str) -> str:
    if not n:
        return ""
    if not allowed:
        return f"{n:,} {kind}"
    return f"{n:,} {kind} ({'all' if allowed == n else f'{allowed:,}'} allowed)"


def _fixes(r: CheckReport, width: int | None) -> str:
    """The best fixes as commands to paste: never cut, whatever the width."""
    lines = []
    for i, s in enumerate(r.suggestions[:CHECK_FIXES_SHOWN]):
        label = "fix:" if i == 0 else "or:"
        lines.extend(wrap_text(f"{label} {s.fix} ({_fix_effect(s)})", width, indent="  "))
        lines.extend(command_lines(s.command, width))
    if len(r.suggestions) > CHECK_FIXES_SHOWN:
        lines.append(f"({len(r.suggestions) - CHECK_FIXES_SHOWN:,} more in --format json)")
    return "\n".join(lines)


def _fix_effect(s: Suggestion) -> str:
    if not (s.missing_after or s.unexpected_after or s.shape_mismatch_after):
        return "then every key matches"
    if s.passes:
        return "then only allowed keys differ"
    left = [
        f"{s.missing_after:,} missing" if s.missing_after else "",
        f"{s.unexpected_after:,} unexpected" if s.unexpected_after else "",
        plural(s.shape_mismatch_after, "size mismatch", "size mismatches") if s.shape_mismatch_after else "",
    ]
    return f"{plural(s.fixes, 'more key')} match; {', '.join(p for p in left if p)} left"


def _collapsed(findings: list[Finding]) -> list[tuple[str, str, str, str]]:
    """Finding rows; a kind of key finding (missing, unexpected ...) with more rows than a
    table should hold shows its first few and one row counting the rest."""
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        kind = f.message.split(":", 1)[0] if f.key is not None else f"#{id(f)}"
        groups.setdefault((f.check, kind), []).append(f)
    rows: list[tuple[str, str, str, str]] = []
    for (_, kind), group in groups.items():
        shown = group if len(group) <= CHECK_ROWS_PER_KIND else group[:CHECK_ROWS_KEPT]
        rows += [(f.severity, f.check, f.key or "", f.message) for f in shown]
        if len(shown) < len(group):
            rest = len(group) - len(shown)
            first = group[0]
            rows.append((first.severity, first.check, f"({rest:,} more)", f"{kind}: all in --format json or csv"))
    return rows


def _check_summary(reports: list[CheckReport], strict: bool, width: int | None) -> str:
    with_keys = any(r.keys is not None for r in reports)
    headers = ["file", "result", "errors", "warnings", *(["keys"] if with_keys else [])]
    body = []
    for r in reports:
        row = [r.path, _check_result(r, strict), grouped(r.count("error")), grouped(r.count("warning"))]
        if with_keys:
            row.append(f"{r.keys.found_matched:,} of {r.keys.found:,}" if r.keys is not None else "")
        body.append(row)
    align = ["left", "left", "right", "right", *(["right"] if with_keys else [])]
    return fit_table(headers, body, width, shrink=(0,), align=align)
