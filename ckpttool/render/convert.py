"""What `convert` (and `--keep-structure`) and `remap` print about the files they wrote."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckpttool.render.text import human_size, key_values, output_width, plural, to_json

if TYPE_CHECKING:  # only for annotations: JSON output must not pay for importing every op
    from ckpttool.ops.convert import ConvertReport
    from ckpttool.ops.rewrite import RekeyReport, RemapReport

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
    pairs: list[tuple[str, object]] = [
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
    return key_values(pairs, output_width())


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
    pairs: list[tuple[str, object]] = [
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
        ],
        output_width(),
    )
