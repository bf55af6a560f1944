"""Tables that fit the terminal: key and name columns cut where rows stay apart, prose
columns wrapped, columns with one value in every row said once, and, where even that
is too wide, one block of `column: value` lines per row. Numbers are never cut."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ckpttool.render.keys import shorten_keys
from ckpttool.render.text import ELLIPSIS, key_values, plural, to_table, wrap_text

KEY_FLOOR = 8  # the narrowest a cut key or name column gets
WRAP_FLOOR = 16  # the narrowest a wrapped prose column gets
COMFORTABLE_KEYS = 24  # below this, a layout that says uniform columns once is preferred


@dataclass
class _Layout:
    columns: list[int]  # the columns shown, in order
    limits: dict[int, int]  # new widths of the cut or wrapped columns
    padded: bool  # tabulate's 2 spaces of padding around headers
    key_room: int  # the width the first cut column keeps


def fit_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    width: int | None,
    shrink: Sequence[int] = (0,),
    align: Sequence[str] | None = None,
    indented: bool = False,
    whole: str = "--format csv",
    wrap: Sequence[int] = (),
    keys_above: bool = False,
    paths: bool = False,
) -> str:
    """A table no wider than `width`: cells of the `shrink` columns (keys, names, paths)
    are cut with `…` where rows stay apart, cells of the `wrap` columns (prose) go on
    more lines; a last line counts the cut cells and names the output that shows them
    `whole`. With `keys_above`, keys (column 0) that a cut cannot tell apart are put whole
    on lines of their own above their rows instead. With `paths`, the cut columns hold
    file paths, cut between folders (a dot there is part of a name)."""
    body = [[_cell(c) for c in row] for row in rows]
    if width is None or not body or _natural_width(headers, body) <= width:
        return to_table(headers, body, align, indented)
    layout = _choose_layout(headers, body, width, list(shrink), list(wrap))
    if layout is None:
        return _blocks(headers, body, width)
    sep = "/" if paths else None
    if keys_above and _cuts_collide(body, layout.limits.get(0), sep):
        above = _keys_above(headers, body, width, align)
        if above is not None:
            return above
    return _render(headers, body, layout, width, list(shrink), list(wrap), align, indented, whole, sep)


def _choose_layout(
    headers: Sequence[str], body: list[list[str]], width: int, shrink: list[int], wrap: list[int]
) -> _Layout | None:
    """The first layout whose keys keep a comfortable width, else the fitting one that
    keeps the most of them; None when none fits."""
    every = list(range(len(headers)))
    varying = [i for i in every if i in shrink or i in wrap or len(body) < 2 or len({r[i] for r in body}) > 1]
    fitting = []
    for columns, padded in ((every, True), (every, False), (varying, False)):
        layout = _layout(headers, body, width, columns, padded, shrink, wrap)
        if layout is not None:
            natural = max((len(r[shrink[0]]) for r in body), default=0) if shrink else 0
            if layout.key_room >= min(COMFORTABLE_KEYS, natural):
                return layout
            fitting.append(layout)
    return max(fitting, key=lambda layout: layout.key_room, default=None)


def _layout(
    headers: Sequence[str],
    body: list[list[str]],
    width: int,
    columns: list[int],
    padded: bool,
    shrink: list[int],
    wrap: list[int],
) -> _Layout | None:
    pad = 2 if padded else 0
    widths = {i: max(len(headers[i]) + pad, *(_cell_width(r[i]) for r in body)) for i in columns}
    floors = {i: len(headers[i]) + pad for i in columns}
    for i in columns:
        if i in shrink:
            floors[i] = max(floors[i], min(widths[i], KEY_FLOOR))
        elif i in wrap:
            floors[i] = max(floors[i], min(widths[i], WRAP_FLOOR))
        else:
            floors[i] = widths[i]
    limits = dict(widths)
    excess = sum(widths.values()) + 2 * (len(columns) - 1) - width
    while excess > 0:
        # Prose wraps first (nothing is lost), then keys are cut, the widest first.
        room = [i for i in columns if limits[i] > floors[i] and i in wrap] or [
            i for i in columns if limits[i] > floors[i]
        ]
        if not room:
            return None
        widest = max(room, key=lambda i: limits[i] - floors[i])
        limits[widest] -= 1
        excess -= 1
    key_room = limits[shrink[0]] if shrink and shrink[0] in columns else width
    return _Layout(columns, {i: w for i, w in limits.items() if w < widths[i]}, padded, key_room)


def _render(
    headers: Sequence[str],
    body: list[list[str]],
    layout: _Layout,
    width: int,
    shrink: list[int],
    wrap: list[int],
    align: Sequence[str] | None,
    indented: bool,
    whole: str,
    sep: str | None,
) -> str:
    cells = {i: [r[i] for r in body] for i in layout.columns}
    cut_cells = 0
    for i, limit in layout.limits.items():
        if i in wrap:
            cells[i] = ["\n".join(wrap_text(c, limit)) for c in cells[i]]
            continue
        short = shorten_keys(cells[i], limit, sep)
        cut_cells += sum(a != b for a, b in zip(short, cells[i], strict=True))
        cells[i] = short
    shown_rows = [[cells[i][n] for i in layout.columns] for n in range(len(body))]
    shown_align = None if align is None else [align[i] for i in layout.columns]
    table = _tabulated([headers[i] for i in layout.columns], shown_rows, shown_align, indented, layout.padded)
    dropped = [i for i in range(len(headers)) if i not in layout.columns]
    if dropped:
        said = "; ".join(f"{headers[i]} {body[0][i] or '-'}" for i in dropped)
        table += "\n" + "\n".join(wrap_text(f"(every row: {said})", width))
    if cut_cells:
        note = f"({plural(cut_cells, 'cell')} cut with {ELLIPSIS} to fit {width} columns; {whole} shows all)"
        table += "\n" + (note if len(note) <= width else f"({plural(cut_cells, 'cell')} cut with {ELLIPSIS})")
    return table


def _cuts_collide(body: list[list[str]], limit: int | None, sep: str | None) -> bool:
    """Whether keys that differ would read the same once cut to `limit`."""
    if limit is None:
        return False
    keys = [r[0] for r in body]
    return len(set(shorten_keys(keys, limit, sep))) < len(set(keys))


def _keys_above(headers: Sequence[str], body: list[list[str]], width: int, align: Sequence[str] | None) -> str | None:
    """Keys too narrow to tell rows apart: each key whole on a line of its own, above its
    row of the other columns (indented); None when those do not fit on one line a row."""
    rest = fit_table(
        headers[1:], [r[1:] for r in body], width - 2, shrink=(), align=None if align is None else align[1:]
    )
    lines = rest.split("\n")
    ruled = len(lines) >= 2 + len(body) and set(lines[1]) <= {"-", " "}  # a table, not blocks
    if not ruled or any("\n" in c for r in body for c in r):
        return None
    out = [headers[0], *("  " + line for line in lines[:2])]
    for row, line in zip(body, lines[2 : 2 + len(body)], strict=True):
        out.extend(wrap_text(row[0], width, indent="  "))
        out.append("  " + line)
    return "\n".join([*out, *lines[2 + len(body) :]])


def _tabulated(
    headers: list[str], rows: list[list[str]], align: Sequence[str] | None, indented: bool, padded: bool
) -> str:
    if padded:
        return to_table(headers, rows, align, indented)
    import tabulate

    saved = tabulate.MIN_PADDING
    tabulate.MIN_PADDING = 0  # a header as wide as its text: the room goes to the keys
    try:
        return to_table(headers, rows, align, indented)
    finally:
        tabulate.MIN_PADDING = saved


def _blocks(headers: Sequence[str], body: list[list[str]], width: int) -> str:
    """Too many columns for the width: one `column: value` block per row, nothing cut."""
    return "\n\n".join(key_values(list(zip(headers, row, strict=True)), width) for row in body)


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def _cell_width(text: str) -> int:
    return max((len(line) for line in text.split("\n")), default=0)


def _natural_width(headers: Sequence[str], body: list[list[str]]) -> int:
    """The width tabulate's simple table takes: each column as wide as its widest cell or
    its header with 2 of padding, 2 spaces between columns (no table is drawn to know)."""
    columns = [max(len(h) + 2, *(_cell_width(r[i]) for r in body)) for i, h in enumerate(headers)]
    return sum(columns) + 2 * (len(columns) - 1)
