"""The only place that turns results into text: tables (tabulate), JSON and CSV.

Every JSON document carries `schema_version`; CSV is one row per item with a header;
tables are for people. Library code returns dataclasses and never prints.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: JSON output must not pay for importing every op
    from ckpttool.checkpoint import Chunk
    from ckpttool.ops.check import CheckReport
    from ckpttool.ops.convert import ConvertReport
    from ckpttool.ops.diff import DiffReport
    from ckpttool.ops.inspect import Count, Counts, InspectReport, TensorRow, TreeRow
    from ckpttool.ops.optimizer import OptimizerReport
    from ckpttool.ops.rekey import RekeyReport
    from ckpttool.ops.remap import RemapReport
    from ckpttool.ops.scan import FileScan
    from ckpttool.ops.scanpaths import ScanEntry, UnreadableFile
    from ckpttool.ops.stats import TensorStats

SCHEMA_VERSION = 1
TENSOR_COLUMNS = ("key", "dtype", "shape", "numel", "nbytes", "device")


def to_json(payload: dict[str, Any], version: int = SCHEMA_VERSION) -> str:
    # Compact: json's C encoder only runs without indent, and outputs can hold 10^5 rows.
    return json.dumps({"schema_version": version, **payload}, allow_nan=False, separators=(",", ":"))


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
    under its first item; a long text is cut with a count of what was cut."""
    from tabulate import tabulate

    rows = [(f"{k}:", v) for k, v in pairs]
    if rows:
        indent = max(len(label) for label, _ in rows) + 2  # tabulate's plain column gap
        budget = None if width is None else max(width - indent, MIN_WIDTH // 2)
        rows = [(label, _fit_value(value, budget)) for label, value in rows]
    return str(tabulate(rows, tablefmt="plain", disable_numparse=True))


MAX_WRAPPED_LINES = 4


def _fit_value(value: Any, budget: int | None) -> Any:
    if isinstance(value, (list, tuple)):
        return "\n".join(wrap_list([str(v) for v in value], budget))
    if budget is None or not isinstance(value, str) or "\n" in value or len(value) <= budget:
        return value
    if " " not in value:
        return cut(value, budget)
    import textwrap

    lines = textwrap.wrap(value, budget, break_on_hyphens=False)
    if len(lines) > MAX_WRAPPED_LINES:
        rest = " ".join(lines[MAX_WRAPPED_LINES - 1 :])
        lines = [*lines[: MAX_WRAPPED_LINES - 1], cut(rest, budget)]
    return "\n".join(lines)


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


def wrap_list(items: Sequence[str], width: int | None, sep: str = ", ") -> list[str]:
    """Items joined by `sep`, broken into lines of at most `width` between items; an item
    longer than a line is shortened with `…`."""
    if width is None:
        return [sep.join(items)]
    lines: list[str] = []
    line = ""
    for i, item in enumerate(items):
        piece = shorten(item, width - len(sep.rstrip())) + (sep.rstrip() if i < len(items) - 1 else "")
        candidate = f"{line} {piece}" if line else piece
        if line and len(candidate) > width:
            lines.append(line)
            candidate = piece
        line = candidate
    return [*lines, line] if line or not lines else lines


def fit_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    width: int | None,
    shrink: Sequence[int] = (0,),
    align: Sequence[str] | None = None,
    indented: bool = False,
    whole: str = "--format csv",
) -> str:
    """A table no wider than `width`: cells of the `shrink` columns (keys in the middle,
    others at the end) are cut with `…`, the widest first, and a last line counts them
    and names the output that shows them `whole`."""
    body = [[_cell(c) for c in row] for row in rows]
    if width is None or not body:
        return to_table(headers, body, align, indented)
    # tabulate pads every header by 2 (its MIN_PADDING): a column is never narrower than that.
    floors = [len(str(h)) + 2 for h in headers]
    widths = [max(floors[i], *(len(r[i]) for r in body)) for i in range(len(headers))]
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    limits = _shrunk(widths, floors, shrink, excess)
    cut_cells = 0
    for row in body:
        for i, limit in limits.items():
            if len(row[i]) > limit:
                row[i] = shorten(row[i], limit, middle=i == shrink[0])
                cut_cells += 1
    table = to_table(headers, body, align, indented)
    if cut_cells:
        note = f"({plural(cut_cells, 'cell')} cut with {ELLIPSIS} to fit {width} columns; {whole} shows all)"
        table += "\n" + (note if len(note) <= width else f"({plural(cut_cells, 'cell')} cut with {ELLIPSIS})")
    return table


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _shrunk(widths: list[int], floors: list[int], shrink: Sequence[int], excess: int) -> dict[int, int]:
    """New widths for the shrinkable columns, taking `excess` characters off the widest
    first, none below its header or 8 characters."""
    limits = {i: widths[i] for i in shrink}
    while excess > 0:
        room = [i for i in shrink if limits[i] > max(floors[i], 8)]
        if not room:
            break
        widest = max(room, key=lambda i: limits[i])
        limits[widest] -= 1
        excess -= 1
    return {i: w for i, w in limits.items() if w < widths[i]}


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


# -- inspect ----------------------------------------------------------------------------

ROLE_LABELS = {"parameter": "param", "buffer": "buffer"}
KIND_LABELS = {"module": "pickled nn.Module", "script_module": "TorchScript module", "state_dict": "state_dict"}
ROLE_SOURCES = {
    "module": "from the pickled module tree",
    "declared": "as the archive's code/ declares them",
    "file": "as saved (nn.Parameter or plain tensor)",
    "guessed": "a guess from key names and dtypes: the file does not say",
}


def tensor_json(row: TensorRow) -> dict[str, Any]:
    out = {
        "key": row.key,
        "dtype": row.dtype,
        "shape": row.shape,
        "numel": row.numel,
        "nbytes": row.nbytes,
        "device": row.device,
        "kind": row.kind,
        "role": row.role,
        "storage": row.storage,
        "storage_offset": row.storage_offset,
        "stride": row.stride,
        "contiguous": row.contiguous,
        "layout": row.layout,
    }
    if row.chunks is not None:
        out["chunks"] = [chunk_json(c) for c in row.chunks]
    return out


def chunk_json(chunk: Chunk) -> dict[str, Any]:
    return {"offsets": list(chunk.offsets), "sizes": list(chunk.sizes), "file": chunk.file,
            "offset": chunk.offset, "length": chunk.length, "rank": chunk.rank}  # fmt: skip


def chunk_rows_table(rows: list[TensorRow], width: int | None = None) -> str:
    """One row per saved piece of each split tensor: where in the tensor, in which file."""
    body = [
        (r.key, shape_text(list(c.offsets)), shape_text(list(c.sizes)), "" if c.rank is None else c.rank, c.file,
         grouped(c.offset), human_size(c.length))
        for r in rows for c in r.chunks or ()
    ]  # fmt: skip
    headers = ("key", "offsets", "sizes", "rank", "file", "at byte", "stored")
    align = ("left", "left", "left", "right", "left", "right", "right")
    return fit_table(headers, body, width, shrink=(0, 4), align=align)


def inspect_json(report: InspectReport, weights: list[TensorRow], tensors: list[TensorRow]) -> str:
    from ckpttool.ops.inspect import count

    return to_json(
        {
            "path": report.path,
            "format": report.format,
            "file_size": report.file_size,
            "byteorder": report.byteorder,
            "weights": {
                "root": report.weights_root,
                "kind": report.weights_kind,
                "alternatives": report.alternatives,
                "roles": report.roles,
                "counts": counts_json(count(weights)),
                "tensors": [tensor_json(r) for r in weights],
                "attributes": [tensor_json(r) for r in report.attributes],
            },
            "entries": report.entries,
            "objects": [{"path": o.path, "class": o.cls} for o in report.objects],
            "tensors": [tensor_json(r) for r in tensors],
            "metadata": report.metadata,
            "notes": report.notes,
            "anomalies": report.anomalies,
        }
    )


def counts_json(counts: Counts) -> dict[str, Any]:
    return {
        "parameters": asdict(counts.parameters),
        "buffers": asdict(counts.buffers),
        "other": asdict(counts.other),
        "total": asdict(counts.total),
        "dtypes": {dtype: asdict(c) for dtype, c in counts.dtypes.items()},
        "tied": counts.tied,
    }


def tensor_rows_csv(rows: list[TensorRow]) -> str:
    body = ((r.key, r.dtype, shape_text(r.shape), r.numel, r.nbytes, r.device, r.role or "") for r in rows)
    return to_csv((*TENSOR_COLUMNS, "role"), body)


def tensor_rows_table(rows: list[TensorRow], width: int | None = None) -> str:
    """One row per tensor; the device column only when devices differ (the summary names
    the one device otherwise), the role column only where roles are known."""
    columns: list[tuple[str, str, Any]] = [
        ("key", "left", lambda r: r.key),
        ("dtype", "left", lambda r: r.dtype),
        ("shape", "left", lambda r: shape_text(r.shape)),
        ("numel", "right", lambda r: grouped(r.numel)),
        ("size", "right", lambda r: human_size(r.nbytes)),
    ]
    if len({r.device for r in rows}) > 1:
        columns.append(("device", "left", lambda r: r.device))
    if any(r.role for r in rows):
        columns.append(("role", "left", lambda r: ROLE_LABELS.get(r.role or "", "")))
    if any(r.chunks for r in rows):
        columns.append(("chunks", "right", lambda r: len(r.chunks or ())))
    body = [[get(r) for _, _, get in columns] for r in rows]
    headers = [name for name, _, _ in columns]
    return fit_table(headers, body, width, shrink=(0, 2), align=[a for _, a, _ in columns])


def inspect_summary(
    report: InspectReport,
    held: list[tuple[str, Count]],
    shown: list[TensorRow],
    width: int | None = None,
    verbose: bool = False,
    filtered: bool = False,
) -> str:
    from ckpttool.ops.inspect import count

    pairs: list[tuple[str, Any]] = [("file", report.path), ("format", report.format)]
    pairs.append(("file size", human_size(report.file_size)))
    if report.byteorder != "little":
        pairs.append(("byteorder", report.byteorder))
    pairs.append(("weights", _weights_line(report)))
    pairs.extend(("also", f"{alt} (not chosen)") for alt in report.alternatives)
    pairs.extend(_count_lines(count(shown), report.roles, shown, filtered))
    if report.attributes:
        pairs.append(("attributes", _attributes_line(report)))
    pairs.extend((name, f"{plural(c.tensors, 'tensor')}, {human_size(c.nbytes)}") for name, c in held)
    pairs.extend((f"entry {k}", compact(v, 200)) for k, v in report.entries.items())
    if verbose:
        pairs.extend((f"metadata {k}", v) for k, v in report.metadata.items())
    classes = _class_counts(report)
    if classes:
        pairs.append(("classes", classes))
    pairs.extend(("note", n) for n in report.notes)
    pairs.extend(("anomaly", a) for a in report.anomalies)
    return key_values(pairs, width)


def _count_lines(counts: Counts, roles: str, shown: list[TensorRow], filtered: bool) -> list[tuple[str, Any]]:
    if not shown:
        return [("tensors", "none shown" + (": --filter matches no key" if filtered else ""))]
    devices: dict[str, int] = {}
    for row in shown:
        devices[row.device] = devices.get(row.device, 0) + 1
    lines: list[tuple[str, Any]] = []
    for label, c in (("parameters", counts.parameters), ("buffers", counts.buffers), ("other", counts.other)):
        if c.tensors or (label == "buffers" and counts.parameters.tensors):
            lines.append((label, _count_text(c)))
    if counts.parameters.tensors or counts.buffers.tensors:
        lines.append(("roles", ROLE_SOURCES.get(roles, roles)))
    total = f"{human_count(counts.total.numel)} elements in {plural(counts.total.tensors, 'tensor')}"
    lines.append(("total", f"{total}, {human_size(counts.total.nbytes)}" + (" (filtered)" if filtered else "")))
    if counts.tied:
        verb = "shares" if counts.tied == 1 else "share"
        lines.append(("tied", f"{plural(counts.tied, 'key')} {verb} a tensor with an earlier key, counted once"))
    dtypes = [f"{d} {human_count(c.numel)} ({human_size(c.nbytes)})" for d, c in counts.dtypes.items()]
    lines.append(("dtypes", dtypes))
    lines.append(("devices", [f"{d} ({n})" if len(devices) > 1 else d for d, n in devices.items()]))
    return lines


def _count_text(c: Count) -> str:
    if not c.tensors:
        return "none"
    exact = f" ({grouped(c.numel)})" if c.numel >= 1000 else ""
    return f"{human_count(c.numel)}{exact} in {plural(c.tensors, 'tensor')}, {human_size(c.nbytes)}"


def _attributes_line(report: InspectReport) -> list[str]:
    rows = report.attributes
    head = f"{plural(len(rows), 'tensor')} in no state_dict ({human_size(sum(r.nbytes for r in rows))}):"
    return [f"{head} {rows[0].key}", *(r.key for r in rows[1:])]


def _weights_line(report: InspectReport) -> str:
    if report.weights_root is None:
        return "none found"
    where = f"'{report.weights_root}'" if report.weights_root else "the whole file"
    kind = KIND_LABELS.get(report.weights_kind, report.weights_kind)
    return f"{kind} at {where}, {plural(len(report.weights), 'tensor')}"


def _class_counts(report: InspectReport) -> list[str]:
    counts: dict[str, int] = {}
    for obj in report.objects:
        counts[obj.cls] = counts.get(obj.cls, 0) + 1
    return [f"{cls} x{n}" if n > 1 else cls for cls, n in counts.items()]


def tree_table(rows: list[TreeRow], counts: Counts, width: int | None = None, full_prefix: bool = False) -> str:
    body = [
        ("  " * r.depth + (r.prefix if full_prefix else r.prefix.rsplit(".", 1)[-1]),
         grouped(r.params), grouped(r.buffers), grouped(r.tensors), human_size(r.nbytes))
        for r in rows
    ]  # fmt: skip
    total = counts.total
    body.append(("total", grouped(counts.parameters.numel), grouped(counts.buffers.numel), grouped(total.tensors),
                 human_size(total.nbytes)))  # fmt: skip
    align = ("left", "right", "right", "right", "right")
    return fit_table(("module", "params", "buffers", "tensors", "size"), body, width, align=align, indented=True)


def tree_output(
    report: InspectReport,
    rows: list[TreeRow],
    counts: Counts,
    fmt: str,
    width: int | None = None,
    full_prefix: bool = False,
) -> str:
    if fmt == "json":
        return tree_json(report, rows, counts)
    return tree_csv(rows, counts) if fmt == "csv" else tree_table(rows, counts, width, full_prefix)


def tree_json(report: InspectReport, rows: list[TreeRow], counts: Counts) -> str:
    return to_json(
        {
            "path": report.path,
            "weights_root": report.weights_root,
            "roles": report.roles,
            "tree": [asdict(r) for r in rows],
            "total": counts_json(counts),
        }
    )


def tree_csv(rows: list[TreeRow], counts: Counts) -> str:
    body: list[tuple[Any, ...]] = [
        (r.prefix, r.depth, r.tensors, r.params, r.buffers, r.numel, r.nbytes, r.kind) for r in rows
    ]
    total = counts.total
    body.append(("", "", total.tensors, counts.parameters.numel, counts.buffers.numel, total.numel, total.nbytes, ""))
    return to_csv(("prefix", "depth", "tensors", "params", "buffers", "numel", "nbytes", "kind"), body)


# -- scan -------------------------------------------------------------------------------------

# 2 (from 1): unknown-call, weights_only apart from the verdict, calls, allowed names, and
# an unreadable path as an entry of files[] (verdict unreadable, error).
SCAN_SCHEMA_VERSION = 2
_SCAN_ORDER = {"dangerous": 0, "unknown-call": 1, "needs-allowlist": 2, "safe": 3}
_WEIGHTS_ONLY_TEXT = {
    "loads": "loads as is",
    "loads-after-allowlist": "loads after the add_safe_globals line below",
    "refused": "refused",
    "not-applicable": "not applicable",
}


def scan_json(entries: Sequence[ScanEntry], error: tuple[str | None, str] | None = None) -> str:
    """`files` has every path in order; `error` (as every command's JSON error) when none could be read."""
    payload: dict[str, Any] = {"files": [_scan_entry_json(e) for e in entries]}
    if error is not None:
        payload["error"] = {"path": error[0], "message": error[1], "exit_code": 2}
    return to_json(payload, version=SCAN_SCHEMA_VERSION)


def _scan_entry_json(e: ScanEntry) -> dict[str, Any]:
    from ckpttool.ops.scan import FileScan

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


def _scan_file_json(r: FileScan) -> dict[str, Any]:
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
    from ckpttool.ops.scan import FileScan

    rows = []
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
    from ckpttool.ops.scan import FileScan

    blocks = [_scan_block(r) if isinstance(r, FileScan) else _unreadable_block(r) for r in entries]
    if len(entries) > 1:
        blocks.append(
            to_table(
                ("file", "format", "verdict", "weights_only", "pickles"),
                (
                    (r.path, r.format, r.verdict, r.weights_only.result, r.pickles)
                    if isinstance(r, FileScan)
                    else (r.path, "", r.verdict, "", "")
                    for r in entries
                ),
            )
        )
    return "\n\n".join(blocks)


def _unreadable_block(r: UnreadableFile) -> str:
    # The reason is a line that wraps, never cut.
    return key_values([("file", r.path), ("verdict", r.verdict.upper()), ("error", r.error)], output_width())


def _scan_block(r: FileScan) -> str:
    pairs: list[tuple[str, Any]] = [("file", r.path), ("format", r.format), ("pickles", r.pickles)]
    pairs += [("verdict", r.verdict.upper()), ("weights_only", _WEIGHTS_ONLY_TEXT[r.weights_only.result])]
    if r.allowed:
        pairs.append(("allowed", [f"{name} ({source})" for name, source in sorted(r.allowed.items())]))
    width = output_width()
    lines = [key_values(pairs, width)]
    lines.extend(f"  {reason}" for reason in r.weights_only.reasons)
    if r.globals:
        body = sorted(((g.qualname, ", ".join(g.uses), g.verdict, g.reason) for g in r.globals), key=_verdict_order)
        lines.append(fit_table(("global", "uses", "verdict", "why"), body, width, shrink=(3, 0)))
    from ckpttool.pickle.judge import unknown_calls_by_allow

    for name, calls in unknown_calls_by_allow(r.globals).items():  # one hint for a TorchScript archive's classes
        lines.extend(f"unknown call: {call}" for call in calls)
        lines.append(f"  to allow it: --allow {name}, or [tool.ckpttool] allow in pyproject.toml")
    lines.extend(f"problem: {p}" for p in r.problems)
    lines.extend(f"note: {n}" for n in r.notes)
    if r.allowlist:
        from ckpttool.pickle.weightsonly import allowlist_effect

        lines.append(allowlist_effect(r.weights_only.result))
        lines.extend(f"    import {m}" for m in r.imports)
        lines.extend(allowlist_lines(r.allowlist, width))
    return "\n".join(lines)


def allowlist_lines(call: str, width: int | None, indent: str = "    ") -> list[str]:
    """The `add_safe_globals([...])` line, or within `width` one name per wrapped line
    inside the brackets: still Python to paste as it is."""
    head, bracket, rest = call.partition("([")
    if width is None or len(indent + call) <= width or not bracket or not rest.endswith("])"):
        return [indent + call]
    names = wrap_list(rest[:-2].split(", "), width - 2 * len(indent))
    return [f"{indent}{head}([", *(2 * indent + line for line in names), f"{indent}])"]


def _verdict_order(row: tuple[str, str, str, str]) -> tuple[int, str]:
    return (_SCAN_ORDER.get(row[2], 4), row[0])


def scan_sarif(results: list[FileScan], unreadable: list[tuple[str, str]]) -> str:
    """One SARIF result per finding: each global that is not safe, each problem, each
    weights_only refusal, each unreadable file."""
    from ckpttool import sarif

    findings: list[sarif.Finding] = []
    for r in results:
        findings.extend(_scan_findings(r))
    findings.extend(sarif.Finding("CKPT006", path, message) for path, message in unreadable)
    return sarif.document(findings)


def check_sarif(reports: list[CheckReport]) -> str:
    """One SARIF result per check finding: errors under CKPT101, warnings and notes under CKPT102."""
    from ckpttool import sarif

    levels = {"error": "error", "warning": "warning", "info": "note"}
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


def _scan_findings(r: FileScan) -> list[Any]:
    from ckpttool.sarif import Finding

    rules = {"dangerous": "CKPT001", "unknown-call": "CKPT003", "needs-allowlist": "CKPT004"}
    found = []
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


# -- convert -----------------------------------------------------------------------------------


def convert_output(report: ConvertReport, fmt: str) -> str:
    if fmt == "json":
        return to_json(
            {
                "source": report.source,
                "outputs": report.outputs,
                "format": report.format,
                "weights_root": report.weights_root,
                "tensors": report.tensors,
                "bytes": report.bytes,
                "cast": report.cast,
                "aliases": report.aliases,
                "verified": True,
                "notes": report.notes,
            }
        )
    pairs: list[tuple[str, Any]] = [
        ("source", report.source),
        ("weights", f"'{report.weights_root}'" if report.weights_root else "the whole file"),
        ("wrote", ", ".join(report.outputs)),
        ("format", report.format),
        ("tensors", f"{report.tensors} ({human_size(report.bytes)})"),
    ]
    if report.cast:
        pairs.append(("cast", f"{report.cast} floating tensors"))
    if report.aliases:
        pairs.append(("aliases", ", ".join(f"{a} -> {k}" for a, k in report.aliases.items())))
    pairs.append(("verified", _convert_verified(report)))
    return key_values(pairs)


def _convert_verified(report: ConvertReport) -> str:
    # A cast tensor cannot equal the source: it is checked against the exact cast of it.
    if not report.cast:
        return "every tensor reads back equal to the source"
    kept = report.tensors - report.cast
    same = f"{plural(kept, 'tensor')} read{'s' if kept == 1 else ''} back equal to the source, " if kept else ""
    cast = plural(report.cast, "cast tensor")
    return f"{same}{cast} equal to the exact cast of the source's values (tensor.to(dtype))"


def rekey_output(report: RekeyReport, fmt: str) -> str:
    """`convert --keep-structure`: the whole file written again with renamed keys."""
    if fmt == "json":
        return to_json(
            {
                "source": report.source,
                "outputs": [report.output],
                "format": "pth",
                "weights_root": report.weights_root,
                "keys": report.keys,
                "renamed": report.renamed,
                "kept": report.kept,
                "verified": True,
                "verification": report.verified,
                "notes": report.notes,
            }
        )
    width = output_width()
    pairs: list[tuple[str, Any]] = [
        ("source", report.source),
        ("weights", f"'{report.weights_root}'" if report.weights_root else "the whole file"),
        ("wrote", report.output),
        ("renamed", f"{len(report.renamed):,} of {plural(report.keys, 'key')}"),
    ]
    if report.renamed:
        first, new = next(iter(report.renamed.items()))
        pairs.append(("e.g.", f"{first} -> {new}"))
    if report.kept:
        pairs.append(("kept", report.kept))
    pairs.append(("verified", report.verified))
    return key_values(pairs, width)


# -- remap -------------------------------------------------------------------------------------


def remap_output(report: RemapReport, fmt: str) -> str:
    if fmt == "json":
        return to_json(
            {
                "source": report.source,
                "output": report.output,
                "storages": report.storages,
                "changed": report.changed,
                "verified": True,
                "verification": report.verified,
                "notes": report.notes,
            }
        )
    changes = ", ".join(f"{change} ({n} storages)" for change, n in report.changed.items()) or "none"
    return key_values(
        [
            ("source", report.source),
            ("wrote", report.output),
            ("storages", report.storages),
            ("remapped", changes),
            ("verified", report.verified),
        ]
    )


# -- stats -------------------------------------------------------------------------------------

# The share of zeros is a fraction in JSON and CSV (`zeros`, as before) and a percentage
# in the table, labelled so that it does not read as a count beside `nan` and `inf`.
_STATS_COLUMNS = ("key", "dtype", "shape", "min", "max", "mean", "std", "nan", "inf", "zeros")
_STATS_HEADERS = ("key", "dtype", "shape", "min", "max", "mean", "std", "nan", "inf", "zeros %")


def stats_output(path: str, stats: list[TensorStats], fmt: str, width: int | None = None) -> str:
    if fmt == "json":
        return to_json({"path": path, "stats": [_stats_json(s) for s in stats]})
    rows = [(s.key, s.dtype, shape_text(s.shape), s.min, s.max, s.mean, s.std, s.nan, s.inf, s.zeros) for s in stats]
    if fmt == "csv":
        return to_csv(_STATS_COLUMNS, rows)
    body = ([*(_number(v) for v in row[:7]), grouped(row[7]), grouped(row[8]), _percent(row[9])] for row in rows)
    return fit_table(_STATS_HEADERS, body, width, shrink=(0, 2))


def _percent(share: float | None) -> str:
    if share is None:
        return "-"
    text = f"{share * 100:.2f}"
    # Never round a few zeros to 0.00 or almost all to 100.00: the difference matters.
    if text == "0.00" and share > 0:
        return "<0.01"
    if text == "100.00" and share < 1:
        return ">99.99"
    return text


def _stats_json(s: TensorStats) -> dict[str, Any]:
    mean = {"real": s.mean.real, "imag": s.mean.imag} if isinstance(s.mean, complex) else s.mean
    return {
        "key": s.key, "dtype": s.dtype, "shape": s.shape, "numel": s.numel, "min": s.min, "max": s.max,
        "mean": mean, "std": s.std, "nan": s.nan, "inf": s.inf, "zeros": s.zeros,
    }  # fmt: skip


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, complex):  # a complex tensor's mean, as Python writes it: (0.1+0.2j)
        return f"({value.real:.6g}{value.imag:+.6g}j)"
    return str(value)


# -- diff --------------------------------------------------------------------------------------


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
    return summary + ("\n\n" + fit_table(_DIFF_COLUMNS, rows, width, shrink=(0, 2)) if rows else "")


_DIFF_COLUMNS = ("key", "difference", "detail")


def _diff_summary(report: DiffReport) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [("a", report.a), ("b", report.b)]
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
    if m["mismatched"] is None:
        return "stored bytes differ (no arithmetic for this dtype)"
    share = f"differ in {m['mismatched']:,} of {plural(m['numel'], 'element')} ({_percent(m['share'])}%)"
    errors = f"max abs {_number(m['max_abs'])}, max rel {_number(m['max_rel'])}, rel L2 {_number(m['rel_l2'])}"
    return f"{share}; {errors}"


def _entry(m: dict[str, Any], side: str) -> str:
    return "(absent)" if m.get("absent") == side else compact(m[side], 30)


# -- optimizer ---------------------------------------------------------------------------------


def optimizer_output(path: str, reports: list[OptimizerReport], fmt: str, width: int | None = None) -> str:
    if fmt == "json":
        return to_json({"path": path, "optimizers": [_optimizer_json(r) for r in reports]})
    if fmt == "csv":
        rows = [(r.path, r.type, s.index, s.name, s.step, _state_tensors(s.tensors)) for r in reports for s in r.state]
        return to_csv(("optimizer", "type", "index", "name", "step", "tensors"), rows)
    if not reports:
        return "no optimizer state in this file"
    return "\n\n".join(_optimizer_block(r, width) for r in reports)


def _optimizer_json(r: OptimizerReport) -> dict[str, Any]:
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
    pairs: list[tuple[str, Any]] = [("optimizer", r.path), ("type", f"{r.type or 'unknown'} (inferred)")]
    pairs += [("names", names), ("param groups", len(r.param_groups))]
    lines = [key_values(pairs, width)]
    if r.param_groups:
        lines.append(_hyper_parameter_table(r.param_groups, width))
    state = [(s.index, s.name or "", _number(s.step), _state_tensors(s.tensors)) for s in r.state]
    if state:
        lines.append(fit_table(("index", "name", "step", "state tensors"), state, width, shrink=(1, 3)))
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
    return _number(value) if isinstance(value, float) else compact(value, 60)


def _state_tensors(tensors: dict[str, dict[str, Any]]) -> str:
    return "; ".join(f"{k} {shape_text(t['shape'])} {t['dtype']}" for k, t in tensors.items())


# -- check -------------------------------------------------------------------------------------


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


def _check_json(r: CheckReport, strict: bool) -> dict[str, Any]:
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
    pairs: list[tuple[str, Any]] = [("file", r.path), ("result", _check_result(r, strict))]
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
        blocks.append(f"left out on purpose (a warm start)? accept them with:\n  {' '.join(r.allow_hint)}")
    if r.suggestions:
        blocks.append(_fixes(r, width))
    if r.findings:
        body = _collapsed(r.findings)
        blocks.append(fit_table(("severity", "check", "key", "message"), body, width, shrink=(2, 3)))
    remedies = _remedies(r.findings, width)
    if remedies:
        blocks.append(remedies)
    return "\n\n".join(blocks)


def _remedies(findings: list[Any], width: int | None) -> str:
    """What to paste for each finding that has a remedy, whole on lines of its own: the
    table may cut a message, never these (as scan prints its --allow and add_safe_globals lines)."""
    lines: list[str] = []
    for f in findings:
        if f.remedy is None:
            continue
        lines.append(f.remedy.label)
        *before, last = f.remedy.lines
        lines.extend(f"    {line}" for line in before)
        lines.extend(allowlist_lines(last, width))
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
        lines.append(cut(f"{label} {s.fix} ({_fix_effect(s)})", width))
        lines.append(f"  {s.command}")
    if len(r.suggestions) > CHECK_FIXES_SHOWN:
        lines.append(f"({len(r.suggestions) - CHECK_FIXES_SHOWN:,} more in --format json)")
    return "\n".join(lines)


def _fix_effect(s: Any) -> str:
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


def _collapsed(findings: list[Any]) -> list[tuple[str, str, str, str]]:
    """Finding rows; a kind of key finding (missing, unexpected ...) with more rows than a
    table should hold shows its first few and one row counting the rest."""
    groups: dict[tuple[str, str], list[Any]] = {}
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
