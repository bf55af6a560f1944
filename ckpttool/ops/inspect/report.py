"""What is in a checkpoint: summary, weights, every tensor, entries, pickled classes.

Everything comes from the pickle or header; the only bytes read from the data area
are the few of a 0-dim tensor whose value is shown as an entry (a saved `loss`).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ckpttool.checkpoint import (
    Checkpoint,
    Chunk,
    DTensorLayout,
    GlobalName,
    OpaqueCall,
    PickledObject,
    TensorRef,
    byte_size,
    dtensor_layout,
)
from ckpttool.errors import CkptError, about
from ckpttool.formats import OpenedFile, open_path
from ckpttool.gcpause import gc_paused
from ckpttool.interpret import Cycle
from ckpttool.npvalues import decode_numpy, numpy_json
from ckpttool.scalars import read_scalar
from ckpttool.weights import NamedTensor, all_tensors, find_weights, join, walk

MAX_ENTRY_NODES = 10_000
MAX_ENTRY_DEPTH = 32


@dataclass(slots=True)
class TensorRow:
    key: str
    dtype: str
    shape: list[int]
    numel: int
    nbytes: int
    device: str
    kind: str = "tensor"
    storage: str | None = None
    storage_offset: int = 0
    stride: list[int] = field(default_factory=list)
    contiguous: bool = True
    layout: str = "strided"
    role: str | None = None  # "parameter" or "buffer" for weights; None for other tensors
    chunks: list[Chunk] | None = None  # the pieces it is saved in, where the format splits tensors (DCP)
    dtensor: DTensorLayout | None = None  # a DTensor's place in the whole tensor; the row is its local shard


@dataclass
class ObjectRow:
    path: str
    cls: str


@dataclass
class Count:
    """Tensors, elements and bytes of one group; a tensor viewing the same storage range as
    another (tied weights) adds its key to `tensors` but its elements and bytes only once."""

    tensors: int = 0
    numel: int = 0
    nbytes: int = 0


@dataclass
class Counts:
    """What the shown tensors add up to: parameters and buffers apart, and by dtype."""

    parameters: Count = field(default_factory=Count)
    buffers: Count = field(default_factory=Count)
    other: Count = field(default_factory=Count)  # tensors that are not weights (--all)
    total: Count = field(default_factory=Count)
    dtypes: dict[str, Count] = field(default_factory=dict)
    tied: int = 0  # keys whose elements were already counted under another key


@dataclass
class TreeRow:
    prefix: str
    depth: int
    tensors: int
    params: int  # elements of parameters
    buffers: int  # elements of buffers
    numel: int  # elements of every tensor below, parameters, buffers and others
    nbytes: int
    kind: str = "module"  # or "tensor": a tensor at the top level (`cls_token`), a leaf of the root


@dataclass
class InspectReport:
    path: str
    format: str
    file_size: int
    byteorder: str
    weights_root: str | None
    weights_kind: str
    weights: list[TensorRow]
    tensors: list[TensorRow]
    entries: dict[str, Any]
    objects: list[ObjectRow]
    metadata: dict[str, str] = field(default_factory=dict)
    alternatives: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    roles: str = "none"  # how parameters were told from buffers: module, declared, file, guessed
    attributes: list[TensorRow] = field(default_factory=list)  # TorchScript tensors in no state_dict


def inspect_checkpoint(path: str, root: str | None = None) -> InspectReport:
    """What `ckpttool inspect` shows of a file, as data; `root` names the weights when the guess is wrong."""
    opened = open_path(path)
    return describe(opened.checkpoint(), root, opened)


def danger_notes(opened: OpenedFile) -> list[str]:
    """Reading a file is harmless here, loading it may not be: say so when scan calls it dangerous."""
    from ckpttool.ops.safety.scan import danger, scan_opened

    try:
        found = danger(scan_opened(opened))
    except CkptError:
        return []  # what scan cannot read, inspect has just read: no verdict to give
    if found is None:
        return []
    return [f"DANGEROUS: scan calls this file dangerous ({found.named}); never torch.load it; see `ckpttool scan`"]


def _opened(checkpoint: Checkpoint, opened: OpenedFile | None) -> OpenedFile:
    """The file the checkpoint was read from, as opened (a folder's checkpoint names its file)."""
    return opened if opened is not None and opened.holds(checkpoint) else open_path(checkpoint.path)


@gc_paused()  # 10^5 rows that live until the report is printed
def describe(checkpoint: Checkpoint, root: str | None = None, opened: OpenedFile | None = None) -> InspectReport:
    """`opened`: the file `checkpoint` was read from, whose pickles the safety line then reuses."""
    with about(checkpoint.path):
        weights = find_weights(checkpoint.root, root)
    every, found_objects = tensors_and_objects(checkpoint.root)
    rows: dict[tuple[str, int], TensorRow] = {}  # a bare state_dict lists each tensor twice
    roles = {id(t.tensor): t.role for t in weights.tensors}  # a weight keeps its role under its full path
    report = InspectReport(
        path=checkpoint.path,
        format=checkpoint.format,
        file_size=checkpoint.file_size,
        byteorder=checkpoint.byteorder,
        weights_root=weights.root,
        weights_kind=weights.kind,
        weights=[_row(t, rows, t.role) for t in weights.tensors],
        tensors=[_row(t, rows, roles.get(id(t.tensor))) for t in every],
        entries=entries(checkpoint.root, weights.root),
        objects=found_objects,
        metadata=checkpoint.metadata,
        alternatives=weights.alternatives,
        notes=danger_notes(_opened(checkpoint, opened)) + weights.notes,
        anomalies=checkpoint.anomalies,
        roles=weights.roles,
        attributes=[tensor_row(t) for t in weights.attributes],
    )
    pieces = {id(t.tensor): checkpoint.chunks[t.key] for t in every if t.key in checkpoint.chunks}
    for (_, tensor_id), row in rows.items():
        row.chunks = pieces.get(tensor_id)
    return report


def _row(named: NamedTensor, cache: dict[tuple[str, int], TensorRow], role: str | None) -> TensorRow:
    key = (named.key, id(named.tensor))
    row = cache.get(key)
    if row is None:
        row = cache[key] = tensor_row(named)
        row.role = role
    return row


def tensor_row(named: NamedTensor) -> TensorRow:
    t = named.tensor
    numel = t.numel
    storage = t.storage
    # positional, in TensorRow's field order: a row per tensor, 10^5 of them
    return TensorRow(
        named.key,
        t.dtype,
        list(t.shape),
        numel,
        byte_size(numel, t.dtype),
        t.device if storage is None else storage.location,
        t.kind,
        None if storage is None else storage.key,
        t.offset,
        list(t.stride),
        t.is_contiguous(),
        t.layout,
        None,
        None,
        dtensor_layout(t) if t.extra else None,
    )


Keyed = TypeVar("Keyed", TensorRow, NamedTensor)


def select(rows: list[Keyed], patterns: tuple[str, ...] = (), sort: str | None = None) -> list[Keyed]:
    """Rows whose key matches any glob, in file order or sorted by key or size."""
    if patterns:
        rows = [r for r in rows if any(fnmatch.fnmatchcase(r.key, p) for p in patterns)]
    if sort == "key":
        rows = sorted(rows, key=lambda r: r.key)
    elif sort == "size":
        rows = sorted(rows, key=lambda r: (-r.nbytes, r.key))
    return rows


def count(rows: list[TensorRow]) -> Counts:
    """Parameters, buffers, other tensors, the total and each dtype, tied views counted once."""
    counts = Counts()
    views: dict[tuple[Any, ...], list[TensorRow]] = {}  # rows by where they start in a storage
    sums: dict[tuple[str | None, str], list[int]] = {}  # [tensors, numel, nbytes] by (role, dtype)
    for row in rows:
        fresh = row.storage is None or _first_view(views, row)
        counts.tied += not fresh
        added = sums.get((row.role, row.dtype))
        if added is None:
            added = sums[(row.role, row.dtype)] = [0, 0, 0]
        added[0] += 1
        if fresh:
            added[1] += row.numel
            added[2] += row.nbytes
    groups = {"parameter": counts.parameters, "buffer": counts.buffers}
    for (role, dtype), (tensors, numel, nbytes) in sums.items():  # dtypes in the order first seen
        by_dtype = counts.dtypes.get(dtype) or counts.dtypes.setdefault(dtype, Count())
        for c in (groups.get(role or "", counts.other), counts.total, by_dtype):
            c.tensors += tensors
            c.numel += numel
            c.nbytes += nbytes
    return counts


def _first_view(views: dict[tuple[Any, ...], list[TensorRow]], row: TensorRow) -> bool:
    """Whether no earlier row views the same range of the same storage the same way."""
    start = (row.storage, row.storage_offset, row.dtype)
    earlier = views.get(start)
    if earlier is None:
        views[start] = [row]
        return True
    if any(e.shape == row.shape and e.stride == row.stride for e in earlier):
        return False
    earlier.append(row)
    return True


def tree(rows: list[TensorRow], max_depth: int | None = None) -> list[TreeRow]:
    """Tensors grouped by module prefix (`layer1`, `layer1.0`, ...), parents before their
    children in first-seen order, down to `max_depth` levels (1: top-level modules only).
    A tensor at the top level (`cls_token`, a TorchScript module's own buffer) is a row of
    its own (kind `tensor`), so that the top-level rows add up to the total."""
    nodes: dict[tuple[str, str], TreeRow] = {}
    children: dict[str, list[tuple[str, str]]] = {"": []}
    for row in rows:
        parts = row.key.split(".")
        if len(parts) == 1:
            leaf = nodes[("tensor", row.key)] = TreeRow(row.key, 0, 0, 0, 0, 0, 0, kind="tensor")
            children[""].append(("tensor", row.key))
            _add(leaf, row)
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            node = nodes.get(("module", prefix))
            if node is None:
                node = nodes[("module", prefix)] = TreeRow(prefix, depth - 1, 0, 0, 0, 0, 0)
                children.setdefault(".".join(parts[: depth - 1]), []).append(("module", prefix))
            _add(node, row)
    ordered: list[TreeRow] = []
    stack = list(reversed(children[""]))
    while stack:
        node = nodes[stack.pop()]
        if max_depth is None or node.depth < max_depth:
            ordered.append(node)
            if node.kind == "module":
                stack.extend(reversed(children.get(node.prefix, [])))
    return ordered


def _add(node: TreeRow, row: TensorRow) -> None:
    node.tensors += 1
    node.params += row.numel if row.role == "parameter" else 0
    node.buffers += row.numel if row.role == "buffer" else 0
    node.numel += row.numel
    node.nbytes += row.nbytes


# -- entries and objects ------------------------------------------------------------------


def entries(root: Any, weights_root: str | None, read_scalars: bool = True) -> dict[str, Any]:
    """Top-level values that are not weights (epoch, loss, hyper-parameters, ...), as JSON.
    A saved 0-dim tensor shows its value, read from the file, unless `read_scalars` is off;
    numpy scalars and arrays show their values (see `npvalues`)."""
    return {name: jsonable(value, read_scalars) for name, value in entry_values(root, weights_root).items()}


def entry_values(root: Any, weights_root: str | None) -> dict[str, Any]:
    """The same top-level values as they are in the model (for comparing them whole)."""
    if not isinstance(root, dict) or weights_root == "":
        return {}
    out: dict[str, Any] = {}
    for key, value in root.items():
        name = str(key)
        if name == weights_root or _holds_tensors(value):
            continue
        out[name] = value
    return out


def _holds_tensors(value: Any) -> bool:
    if isinstance(value, TensorRef):
        return value.numel != 1 or value.storage is None
    return any(isinstance(node, (TensorRef, PickledObject)) and _heavy(node) for _, node in walk(value))


def _heavy(node: Any) -> bool:
    if isinstance(node, TensorRef):
        return node.numel != 1
    return bool(node.is_module)


def objects(root: Any) -> list[ObjectRow]:
    return [ObjectRow(path, node.cls) for path, node in walk(root) if isinstance(node, PickledObject)]


def tensors_and_objects(root: Any) -> tuple[list[NamedTensor], list[ObjectRow]]:
    """`all_tensors(root)` and `objects(root)` from one walk of the tree."""
    tensors: list[NamedTensor] = []
    found: list[ObjectRow] = []
    for path, node in walk(root):
        if isinstance(node, TensorRef):
            tensors.append(NamedTensor(path, node))
        elif isinstance(node, PickledObject):
            found.append(ObjectRow(path, node.cls))
    return tensors, found


def jsonable(value: Any, read_scalars: bool = True) -> Any:
    """A JSON-ready copy, bounded in size and depth (the graph may be shared or cyclic). A
    container met again inside itself (OmegaConf's `_parent`, in every Hydra config that
    Lightning saves as hyper-parameters) is `<cycle>`, not unrolled to the depth bound."""
    budget = [MAX_ENTRY_NODES]
    return _jsonable(value, 0, budget, read_scalars, set())


def _jsonable(value: Any, depth: int, budget: list[int], read_scalars: bool, within: set[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_ENTRY_DEPTH:
        return "..."
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list, tuple, set, frozenset, PickledObject)):
        if id(value) in within:
            return str(Cycle())
        within.add(id(value))
        try:
            return _container(value, depth, budget, read_scalars, within)
        finally:
            within.discard(id(value))
    if isinstance(value, TensorRef):
        return _tensor_value(value, read_scalars)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, complex):
        return str(value)
    if isinstance(value, OpaqueCall) and (decoded := decode_numpy(value)) is not None:
        return numpy_json(decoded)
    if isinstance(value, (GlobalName, OpaqueCall, Cycle)):
        return str(value)
    return f"<{type(value).__name__}>"


def _container(value: Any, depth: int, budget: list[int], read_scalars: bool, within: set[int]) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1, budget, read_scalars, within) for k, v in value.items()}
    if isinstance(value, PickledObject) and (held_value := _omegaconf_value(value)) is not _UNSHOWN:
        return _jsonable(held_value, depth + 1, budget, read_scalars, within)
    if isinstance(value, PickledObject):
        # Its attributes, then what SETITEMS and APPENDS put in a dict or list subclass
        # (Lightning's AttributeDict holds its hyper-parameters as items) and the arguments
        # NEWOBJ gave `__new__` (a namedtuple's fields, TorchVersion's string), by the
        # paths `walk` gives them.
        held = [*value.attributes.items(), *(value.dictitems or {}).items(), *enumerate(value.items or ())]
        held.extend((f"args{i}", arg) for i, arg in enumerate(value.args))
        shown = {str(k): _jsonable(v, depth + 1, budget, read_scalars, within) for k, v in held}
        return {"__class__": value.cls, **shown}
    return [_jsonable(v, depth + 1, budget, read_scalars, within) for v in value]


_UNSHOWN = object()
# OmegaConf's containers and value nodes (Hydra configs, which Lightning saves as
# hyper-parameters and as optimizer arguments), and the attribute that holds their value.
_OMEGACONF_VALUES = {"omegaconf.dictconfig.DictConfig": "_content", "omegaconf.listconfig.ListConfig": "_content"}


def _omegaconf_value(obj: PickledObject) -> Any:
    """What an OmegaConf container or node holds, as `OmegaConf.to_container` gives it
    (interpolations unresolved): a DictConfig's mapping, a ListConfig's list, a node's
    `_val`; _UNSHOWN for any other object, or one not in the shape OmegaConf pickles."""
    name = _OMEGACONF_VALUES.get(obj.cls)
    if name is None and obj.cls.startswith("omegaconf.nodes.") and obj.cls.endswith("Node"):
        name = "_val"
    attrs = obj.attributes
    if name is None or name not in attrs or "_metadata" not in attrs:
        return _UNSHOWN
    return attrs[name]


def _tensor_value(tensor: TensorRef, read_scalars: bool = True) -> Any:
    scalar = read_scalar(tensor) if tensor.numel == 1 and read_scalars else None
    if scalar is not None:
        return scalar if not isinstance(scalar, float) or math.isfinite(scalar) else str(scalar)
    return f"<tensor {tensor.dtype} {list(tensor.shape)} {tensor.device}>"


def top_level_summary(root: Any, weights_root: str | None) -> list[tuple[str, Count]]:
    """Each top-level key that holds tensors other than the weights, with what it holds."""
    if not isinstance(root, dict) or weights_root == "":
        return []
    lines = []
    for key, value in root.items():
        name = str(key)
        if name == weights_root or not _holds_tensors(value):
            continue
        found = all_tensors(value)
        held = Count(len(found), sum(t.tensor.numel for t in found), sum(t.tensor.nbytes for t in found))
        lines.append((join("", name), held))
    return lines
