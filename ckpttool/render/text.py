"""Tables, JSON and CSV, fitting text to the terminal, and numbers people read: the
pieces every command's output is made of."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

SCHEMA_VERSION = 1
TENSOR_COLUMNS = ("key", "dtype", "shape", "numel", "nbytes", "device")


def to_json(payload: dict[str, Any], version: int = SCHEMA_VERSION) -> str:
    # Compact: json's C encoder only runs without indent, and outputs can hold 10^5 rows.
    return json.dumps({"schema_version": version, **payload}, allow_nan=False, separators=(",", ":"))


def json_text(value: Any) -> str:
    """One value encoded exactly as `to_json` encodes it inside a document."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


# A str as `to_json` writes it (json's own C escaper); TypeError for anything else.
encode_string: Callable[[str], str] = json.encoder.encode_basestring_ascii


def json_string(value: Any) -> str:
    """A string as `to_json` writes it; any other value through `json_text`."""
    return encode_string(value) if type(value) is str else json_text(value)


Encoded = str | list[str]  # a JSON value's text, or the pieces it is made of, in order


def to_json_text(members: Iterable[tuple[str, Encoded]], version: int = SCHEMA_VERSION) -> str:
    """`to_json` of a document whose members' values are already encoded (`json_text`), byte for
    byte: a value shared by two members (10^5 rows) is then encoded once, not once per member,
    and the document is joined once from its pieces."""
    return "".join(object_pieces([("schema_version", str(version)), *members]))


def object_pieces(members: Iterable[tuple[str, Encoded]]) -> list[str]:
    """A JSON object, compact as `to_json` writes it, from names and their encoded values."""
    pieces = ["{"]
    for name, value in members:
        pieces.append(f"{json_string(name)}:" if len(pieces) == 1 else f",{json_string(name)}:")
        if isinstance(value, str):
            pieces.append(value)
        else:
            pieces.extend(value)
    pieces.append("}")
    return pieces


def to_csv(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return out.getvalue().rstrip("\n")


def to_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None, indented: bool = False
) -> str:
    """A plain table; `align` per column ("left", "right"); `indented` keeps leading spaces (trees)."""
    from tabulate import tabulate

    return str(
        tabulate(
            list(rows),
            headers=list(headers),
            tablefmt="simple",
            disable_numparse=True,
            colalign=align,
            preserve_whitespace=indented,
        )
    )


def key_values(pairs: Iterable[tuple[str, Any]], width: int | None = None) -> str:
    """`label:  value` lines. A list value is joined with ", " and, within `width`, wrapped
    under its first item; a long text is cut with a count of what was cut. A label longer
    than two fifths of `width` (an entry's key) is a line of its own above its value, so
    the other values keep their room."""
    from tabulate import tabulate

    rows = [(f"{k}:", v) for k, v in pairs]
    if not rows:
        return str(tabulate(rows, tablefmt="plain"))
    apart = set() if width is None else {n for n, (label, _) in enumerate(rows) if len(label) > width * 2 // 5}
    indent = max((len(label) for n, (label, _) in enumerate(rows) if n not in apart), default=0) + 2
    budget = None if width is None else max(width - indent, MIN_WIDTH // 2)
    fitted = [("" if n in apart else label, _fit_value(value, budget)) for n, (label, value) in enumerate(rows)]
    table = str(tabulate(fitted, tablefmt="plain", disable_numparse=True))
    if not apart:
        return table
    lines, out = table.split("\n"), []
    for n, (_, value) in enumerate(fitted):  # tabulate gives each row as many lines as its value
        if n in apart:
            out.extend(wrap_text(rows[n][0], width, indent="  "))
        height = len(value.split("\n")) if isinstance(value, str) else 1
        out.extend(lines[:height])
        del lines[:height]
    return "\n".join(out)


MAX_WRAPPED_LINES = 4


def _fit_value(value: Any, budget: int | None) -> Any:
    if isinstance(value, (list, tuple)):
        return "\n".join(wrap_list([str(v) for v in value], budget, middle=True))
    if budget is None or not isinstance(value, str) or "\n" in value or len(value) <= budget:
        return value
    lines = wrap_text(value, budget)
    if len(lines) > MAX_WRAPPED_LINES:
        rest = " ".join(lines[MAX_WRAPPED_LINES - 1 :])
        lines = [*lines[: MAX_WRAPPED_LINES - 1], cut(rest, budget)]
    return "\n".join(lines)


def wrap_text(text: str, width: int | None, indent: str = "", first: str = "") -> list[str]:
    """`text` on lines of at most `width`: `first` before the first line, `indent` before
    the others; broken between words, and a word longer than a line (a path, a key)
    after a `/` or `.` where it can be."""
    if width is None or len(first) + len(text) <= width:
        return [first + text]
    room = max(width - max(len(first), len(indent)), MIN_WIDTH // 4)
    lines: list[str] = []
    line = ""
    for glue, piece in _pieces(text, room):
        joined = line + glue + piece if line else piece
        if line and len(joined) > room:
            lines.append(line)
            joined = piece
        line = joined
    lines.append(line)
    return [(first if i == 0 else indent) + line for i, line in enumerate(lines)]


def _pieces(text: str, room: int) -> list[tuple[str, str]]:
    """(glue, piece): the words of `text` joined by a space, a word longer than `room`
    in pieces that end after a `/` (a path) or, where a piece is still too long, after
    a `.` (a key), joined by nothing."""
    out: list[tuple[str, str]] = []
    for word in text.split():
        glue = " "
        for atom in _atoms(word, room):
            for start in range(0, len(atom), room):  # an atom longer than a line: cut at the line
                if atom[start : start + room]:
                    out.append((glue, atom[start : start + room]))
                    glue = ""
    return out


def _atoms(word: str, room: int) -> list[str]:
    """A path breaks between folders, a key (or a folder name too long) between parts."""
    import re

    if len(word) <= room:
        return [word]
    folders = re.split(r"(?<=/)", word)
    return [atom for folder in folders for atom in (re.split(r"(?<=\.)", folder) if len(folder) > room else [folder])]


# -- width ------------------------------------------------------------------------------------
# Tables fit the terminal they are printed on; JSON and CSV are never cut.

MIN_WIDTH = 40
ELLIPSIS = "…"


def output_width() -> int | None:
    """Columns a table may use: $COLUMNS when set, else the terminal's width; None (no
    limit) when stdout is not a terminal, so a table piped to a file or a pager stays whole."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return max(int(columns), MIN_WIDTH)
    if not sys.stdout.isatty():
        return None
    import shutil

    return max(shutil.get_terminal_size().columns, MIN_WIDTH)


def cut(text: str, width: int | None) -> str:
    """`text`, or as much of it as fits with `… (+N chars)` saying how much was cut."""
    if width is None or len(text) <= width:
        return text
    for _ in range(3):  # the count's own length changes the room left, settle it
        keep = max(width - len(f"{ELLIPSIS} (+{len(text)} chars)"), 1)
        marker = f"{ELLIPSIS} (+{len(text) - keep} chars)"
        if keep + len(marker) <= width:
            break
    return text[:keep] + marker


def shorten(text: str, width: int, middle: bool = False) -> str:
    """`text` cut to `width` with `…`, at the end or (for dotted keys) after the first
    part, which keeps where it starts and as much of the leaf as fits
    (`layer1…bn1.running_mean`, `model…self_attn.q_proj.weight`)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    if not middle:
        return text[: width - 1] + ELLIPSIS
    head = min(len(text.split(".", 1)[0]), width // 3) if "." in text else (width - 1) // 2
    tail = width - 1 - head
    return text[:head] + ELLIPSIS + text[len(text) - tail :]


def wrap_list(
    items: Sequence[str], width: int | None, sep: str = ", ", whole: bool = False, middle: bool = False
) -> list[str]:
    """Items joined by `sep`, broken into lines of at most `width` between items; an item
    longer than a line is shortened with `…` (`middle`: inside, as `shorten` does, so that
    a count after a dotted name stays whole), or with `whole` (names to paste) kept whole
    on a line of its own."""
    if width is None:
        return [sep.join(items)]
    lines: list[str] = []
    line = ""
    for i, item in enumerate(items):
        shown = item if whole else shorten(item, width - len(sep.rstrip()), middle)
        piece = shown + (sep.rstrip() if i < len(items) - 1 else "")
        candidate = f"{line} {piece}" if line else piece
        if line and len(candidate) > width:
            lines.append(line)
            candidate = piece
        line = candidate
    return [*lines, line] if line or not lines else lines


# -- numbers ----------------------------------------------------------------------------------


def human_size(n: int) -> str:
    """Bytes in binary units (KiB, MiB, GiB), the one unit system of every table."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_count(n: int) -> str:
    """A count people read at a glance: 950, 17.1 K, 21.8 M, 7.0 B (thousand, million, billion)."""
    if abs(n) < 1000:
        return str(n)
    value = float(n)
    for unit in ("K", "M", "B", "T"):
        value /= 1000
        if abs(value) < 999.95 or unit == "T":
            return f"{value:.1f} {unit}"
    return str(n)


def grouped(n: int) -> str:
    """An exact count with thousands separators, for table cells."""
    return f"{n:,}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """`1 tensor`, `2 tensors`, `1,024 tensors`."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def compact(value: Any, limit: int = 60) -> str:
    from ckpttool.npvalues import ArrayList, array_text, json_text

    short = array_text(value, limit) if isinstance(value, ArrayList) else None
    if short is not None:  # a numpy array: whole elements and `…`, not a cut number
        return short
    text = value if isinstance(value, str) else json_text(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def number_text(value: Any) -> str:
    """A statistic as a table cell: 6 significant digits, `-` for none."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, complex):  # a complex tensor's mean, as Python writes it: (0.1+0.2j)
        return f"({value.real:.6g}{value.imag:+.6g}j)"
    return str(value)


def percent_text(share: float | None) -> str:
    """A share as a percentage cell: `-` for none, never rounded to 0 or 100."""
    if share is None:
        return "-"
    text = f"{share * 100:.2f}"
    # Never round a few zeros to 0.00 or almost all to 100.00: the difference matters.
    if text == "0.00" and share > 0:
        return "<0.01"
    if text == "100.00" and share < 1:
        return ">99.99"
    return text


def command_lines(command: str, width: int | None, indent: str = "  ") -> list[str]:
    """A shell command to paste, whole: within `width`, broken between its words with
    ` \\` continuations, which the shell reads as one line."""
    if width is None or len(indent + command) <= width:
        return [indent + command]
    import shlex

    try:
        words = [shlex.quote(word) for word in shlex.split(command)]
    except ValueError:  # not shell words: as it is
        return [indent + command]
    lines = [indent + words[0]]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) + 2 > width:
            lines[-1] += " \\"
            lines.append(indent + "  " + word)
        else:
            lines[-1] += " " + word
    return lines
