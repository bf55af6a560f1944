"""What `inspect` prints: the summary, tensor rows, the module tree, chunks."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ckpttool.gcpause import gc_paused
from ckpttool.render.tables import fit_table
from ckpttool.render.text import (
    TENSOR_COLUMNS,
    Encoded,
    compact,
    encode_string,
    grouped,
    human_count,
    human_size,
    json_text,
    key_values,
    object_pieces,
    plural,
    shape_text,
    to_csv,
    to_json,
    to_json_text,
)

if TYPE_CHECKING:  # only for annotations: JSON output must not pay for importing every op
    from ckpttool.checkpoint import Chunk, DTensorLayout
    from ckpttool.ops.inspect.report import Count, Counts, InspectReport, TensorRow, TreeRow

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
    if row.dtensor is not None:
        out["dtensor"] = dtensor_json(row.dtensor)
    return out


def dtensor_json(layout: DTensorLayout) -> dict[str, Any]:
    """The row's shape is the local shard's; these say where it lies in the whole tensor."""
    names, coordinate = layout.mesh_dim_names, layout.coordinate
    mesh = {"shape": list(layout.mesh_shape), "dim_names": None if names is None else list(names),
            "device_type": layout.device_type}  # fmt: skip
    return {"global_shape": list(layout.global_shape), "placements": list(layout.placements), "mesh": mesh,
            "coordinate": None if coordinate is None else list(coordinate)}  # fmt: skip


# torch's short forms (`str(placement)`): S(0), R, P(sum), _S(0, 2)
_SHORT_PLACEMENTS = (("_StridedShard(dim=", "_S("), ("Shard(dim=", "S("), ("Replicate()", "R"), ("Partial(", "P("),
                     (", sf=", ","))  # fmt: skip


def placements_text(layout: DTensorLayout) -> str:
    texts = []
    for placement in layout.placements:
        for long, short in _SHORT_PLACEMENTS:
            placement = placement.replace(long, short)
        texts.append(placement)
    return " ".join(texts)


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
    # Only JSON lists the chunks whole: CSV has one row per tensor.
    return fit_table(headers, body, width, shrink=(0, 4), align=align, whole="--format json")


@gc_paused()  # a text per row, each alive until the whole text is written
def inspect_json(report: InspectReport, weights: list[TensorRow], tensors: list[TensorRow]) -> str:
    from ckpttool.ops.inspect.report import count

    rendered: dict[int, str] = {}  # weights and tensors share rows: each is encoded once

    def rows_text(rows: list[TensorRow]) -> list[str]:
        pieces = ["["]
        for row in rows:
            text = rendered.get(id(row))
            if text is None:
                text = rendered[id(row)] = tensor_text(row)
            pieces += (text, ",")
        pieces[-1] = "]"  # the last comma, or the list's opening bracket when it is empty
        return pieces if len(pieces) > 1 else ["[]"]

    weights_members: list[tuple[str, Encoded]] = [
        ("root", json_text(report.weights_root)),
        ("kind", json_text(report.weights_kind)),
        ("alternatives", json_text(report.alternatives)),
        ("roles", json_text(report.roles)),
        ("counts", json_text(counts_json(count(weights)))),
        ("tensors", rows_text(weights)),
        ("attributes", json_text([tensor_json(r) for r in report.attributes])),
    ]
    return to_json_text(
        [
            ("path", json_text(report.path)),
            ("format", json_text(report.format)),
            ("file_size", json_text(report.file_size)),
            ("byteorder", json_text(report.byteorder)),
            ("weights", object_pieces(weights_members)),
            ("entries", json_text(report.entries)),
            ("objects", json_text([{"path": o.path, "class": o.cls} for o in report.objects])),
            ("tensors", rows_text(tensors)),
            ("metadata", json_text(report.metadata)),
            ("notes", json_text(report.notes)),
            ("anomalies", json_text(report.anomalies)),
        ]
    )


def tensor_text(row: TensorRow) -> str:
    """`tensor_json(row)` as `to_json` encodes it, written directly: no dict per row."""
    if row.chunks is not None or row.dtensor is not None:
        return json_text(tensor_json(row))
    quote = encode_string  # json's own C escaper, for the fields a row holds as str
    try:
        role = "null" if row.role is None else quote(row.role)
        storage = "null" if row.storage is None else quote(row.storage)
        return (
            f'{{"key":{quote(row.key)},"dtype":{quote(row.dtype)},"shape":{_ints_text(row.shape)},'
            f'"numel":{_int_text(row.numel)},"nbytes":{_int_text(row.nbytes)},"device":{quote(row.device)},'
            f'"kind":{quote(row.kind)},"role":{role},"storage":{storage},'
            f'"storage_offset":{_int_text(row.storage_offset)},"stride":{_ints_text(row.stride)},'
            f'"contiguous":{"true" if row.contiguous is True else json_text(row.contiguous)},'
            f'"layout":{quote(row.layout)}}}'
        )
    except TypeError:  # a field that is no str after all: json encodes it as it would have
        return json_text(tensor_json(row))


def _int_text(value: Any) -> str:
    return str(value) if type(value) is int else json_text(value)


def _ints_text(values: list[int]) -> str:
    for value in values:
        if type(value) is not int:
            return json_text(values)
    return str(values).replace(" ", "")  # "[4, 4]" as JSON writes it, at C speed


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
    if any(r.dtensor for r in rows):  # a DTensor's shape is its local shard's: the whole tensor beside it
        columns.append(("global", "left", lambda r: shape_text(list(r.dtensor.global_shape)) if r.dtensor else ""))
        columns.append(("placement", "left", lambda r: placements_text(r.dtensor) if r.dtensor else ""))
    body = [[get(r) for _, _, get in columns] for r in rows]
    headers = [name for name, _, _ in columns]
    return fit_table(headers, body, width, shrink=(0,), align=[a for _, a, _ in columns], keys_above=True)


def inspect_summary(
    report: InspectReport,
    held: list[tuple[str, Count]],
    shown: list[TensorRow],
    width: int | None = None,
    verbose: bool = False,
    filtered: bool = False,
) -> str:
    from ckpttool.ops.inspect.report import count

    pairs: list[tuple[str, Any]] = [("file", report.path), ("format", report.format)]
    pairs.append(("file size", human_size(report.file_size)))
    if report.byteorder != "little":
        pairs.append(("byteorder", report.byteorder))
    pairs.append(("weights", _weights_line(report)))
    pairs.extend(("also", f"{alt} (not chosen)") for alt in report.alternatives)
    pairs.extend(_count_lines(count(shown), report.roles, shown, filtered))
    pairs.extend(_dtensor_lines(shown))
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


def _dtensor_lines(shown: list[TensorRow]) -> list[tuple[str, Any]]:
    """What a rank's file of DTensors holds: its local shards, on which mesh, where on it."""
    layouts = [r.dtensor for r in shown if r.dtensor is not None]
    if not layouts:
        return []
    meshes = []
    for layout in dict.fromkeys((x.mesh_shape, x.mesh_dim_names, x.device_type, x.coordinate) for x in layouts):
        shape, names, device, coordinate = layout
        named = f" ({', '.join(names)})" if names else ""
        at = f", this rank at {shape_text(list(coordinate))}" if coordinate is not None else ""
        meshes.append(f"{shape_text(list(shape))}{named} on {device}{at}")
    head = f"{plural(len(layouts), 'DTensor')}: shape, numel and size are this rank's local shard"
    return [("dtensors", head), ("mesh", meshes)]


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
