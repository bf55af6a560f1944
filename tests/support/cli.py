"""What the CLI tests share: its JSON answers, its one error line, and its tables read back."""

from __future__ import annotations

import json
from typing import Any, Protocol

ERROR_PREFIX = "ckpttool: error: "


class Ran(Protocol):
    """A finished run of the CLI: click's `Result`, or a child process's outcome."""

    @property
    def exit_code(self) -> int: ...
    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...


def cli_json(result: Ran) -> Any:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def assert_json_error(result: Ran) -> dict[str, Any]:
    """Under `--format json` an error is also a JSON object on stdout, saying what the
    one stderr line says; returns its `error` part."""
    document = json.loads(result.stdout)
    assert set(document) == {"schema_version", "error"}, document
    error: dict[str, Any] = document["error"]
    assert set(error) == {"path", "message", "exit_code"}
    assert error["exit_code"] == result.exit_code
    where = f"{error['path']}: " if error["path"] else ""
    assert result.stderr.splitlines() == [f"{ERROR_PREFIX}{where}{error['message']}"]
    return error


def assert_one_error_line(result: Ran, *fragments: str, fmt: str | None = "table", path: object = None) -> str:
    """Exit 2 and exactly one stderr line, `ckpttool: error: ...`, holding each fragment, no
    traceback; returns the line.

    `fmt` says what stdout holds: nothing (`table`), the JSON error document (`json`), or
    is not looked at (None: runs whose format varies). `path`: the line starts with it."""
    assert result.exit_code == 2, (result.exit_code, result.stdout[:500], result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    if fmt == "json":
        assert_json_error(result)
    elif fmt is not None:
        assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    expected_start = ERROR_PREFIX if path is None else f"{ERROR_PREFIX}{path}: "
    assert lines[0].startswith(expected_start), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def column_starts(rule: str) -> list[int]:
    """Where each column of a tabulate `simple` table begins, read off its dashed rule."""
    starts, at = [], 0
    for dashes in rule.split("  "):
        if dashes:
            begin = rule.index(dashes, at)
            starts.append(begin)
            at = begin + len(dashes)
    return starts


def table(block: list[str]) -> list[dict[str, str]]:
    """A tabulate `simple` table (header, rule, rows) as dicts, cut at the columns its rule marks."""
    header, rule, *rows = block
    starts = column_starts(rule)
    bounds = [*starts, None]
    columns = [header[bounds[i] : bounds[i + 1]].strip() for i in range(len(starts))]
    return [{c: row[bounds[i] : bounds[i + 1]].strip() for i, c in enumerate(columns)} for row in rows]


def table_header(block: list[str]) -> list[str]:
    """The column names of a tabulate `simple` table."""
    header, rule, *_ = block
    bounds = [*column_starts(rule), None]
    return [header[bounds[i] : bounds[i + 1]].strip() for i in range(len(bounds) - 1)]


def matches_cut(shown: str, key: str) -> bool:
    """`shown` is `key` with runs of whole parts left out (each one `…`), its leaf kept."""
    pieces = shown.split("…")
    if not key.endswith(pieces[-1]) or not key.startswith(pieces[0]):
        return False
    at = len(pieces[0])
    for piece in pieces[1:]:
        found = key.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
    return True
