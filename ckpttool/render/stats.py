"""What `inspect --stats` prints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckpttool.render.tables import fit_table
from ckpttool.render.text import grouped, number_text, percent_text, shape_text, to_csv, to_json

if TYPE_CHECKING:  # only for annotations: JSON output must not pay for importing every op
    from ckpttool.ops.inspect import TensorStats

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
    body = (
        [*(number_text(v) for v in row[:7]), grouped(row[7]), grouped(row[8]), percent_text(row[9])] for row in rows
    )
    return fit_table(_STATS_HEADERS, body, width, shrink=(0,), keys_above=True)


def _stats_json(s: TensorStats) -> dict[str, object]:
    mean = {"real": s.mean.real, "imag": s.mean.imag} if isinstance(s.mean, complex) else s.mean
    return {
        "key": s.key, "dtype": s.dtype, "shape": s.shape, "numel": s.numel, "min": s.min, "max": s.max,
        "mean": mean, "std": s.std, "nan": s.nan, "inf": s.inf, "zeros": s.zeros,
    }  # fmt: skip
