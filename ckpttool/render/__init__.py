"""The only place that turns results into text: tables (tabulate), JSON and CSV, one
module per command over the shared pieces in `text`.

Every JSON document carries `schema_version`; CSV is one row per item with a header;
tables are for people. Library code returns dataclasses and never prints.
"""

from __future__ import annotations

from ckpttool.render.check import (
    CHECK_FIXES_SHOWN,
    CHECK_ROWS_KEPT,
    CHECK_ROWS_PER_KIND,
    CHECK_SCHEMA_VERSION,
    check_output,
)
from ckpttool.render.convert import convert_output, rekey_output, remap_output
from ckpttool.render.diff import diff_output
from ckpttool.render.inspect import (
    KIND_LABELS,
    ROLE_LABELS,
    ROLE_SOURCES,
    chunk_json,
    chunk_rows_table,
    counts_json,
    inspect_json,
    inspect_summary,
    tensor_json,
    tensor_rows_csv,
    tensor_rows_table,
    tree_csv,
    tree_json,
    tree_output,
    tree_table,
)
from ckpttool.render.keys import shorten_keys
from ckpttool.render.optimizer import optimizer_output
from ckpttool.render.scan import (
    SCAN_SCHEMA_VERSION,
    check_sarif,
    python_lines,
    scan_csv,
    scan_json,
    scan_sarif,
    scan_table,
)
from ckpttool.render.stats import stats_output
from ckpttool.render.tables import fit_table
from ckpttool.render.text import (
    ELLIPSIS,
    MAX_WRAPPED_LINES,
    MIN_WIDTH,
    SCHEMA_VERSION,
    TENSOR_COLUMNS,
    command_lines,
    compact,
    cut,
    grouped,
    human_count,
    human_size,
    key_values,
    number_text,
    output_width,
    percent_text,
    plural,
    shape_text,
    shorten,
    to_csv,
    to_json,
    to_table,
    wrap_list,
    wrap_text,
)

__all__ = [
    "CHECK_FIXES_SHOWN",
    "CHECK_ROWS_KEPT",
    "CHECK_ROWS_PER_KIND",
    "CHECK_SCHEMA_VERSION",
    "ELLIPSIS",
    "KIND_LABELS",
    "MAX_WRAPPED_LINES",
    "MIN_WIDTH",
    "ROLE_LABELS",
    "ROLE_SOURCES",
    "SCAN_SCHEMA_VERSION",
    "SCHEMA_VERSION",
    "TENSOR_COLUMNS",
    "python_lines",
    "check_output",
    "check_sarif",
    "chunk_json",
    "chunk_rows_table",
    "command_lines",
    "compact",
    "convert_output",
    "counts_json",
    "cut",
    "diff_output",
    "fit_table",
    "grouped",
    "human_count",
    "human_size",
    "inspect_json",
    "inspect_summary",
    "key_values",
    "number_text",
    "optimizer_output",
    "output_width",
    "percent_text",
    "plural",
    "rekey_output",
    "remap_output",
    "scan_csv",
    "scan_json",
    "scan_sarif",
    "scan_table",
    "shape_text",
    "shorten",
    "shorten_keys",
    "stats_output",
    "tensor_json",
    "tensor_rows_csv",
    "tensor_rows_table",
    "to_csv",
    "to_json",
    "to_table",
    "tree_csv",
    "tree_json",
    "tree_output",
    "tree_table",
    "wrap_list",
    "wrap_text",
]
