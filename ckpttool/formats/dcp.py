"""Distributed checkpoints (DCP): a folder with `.metadata` and `*.distcp` data files.

`torch.distributed.checkpoint`'s FileSystemWriter (torch's default `torch_save`
serialisation) writes each rank's items into its `.distcp` files one after another,
each item `torch.save`d on its own: a tensor chunk as a zip archive holding one tensor,
a non-tensor entry as a zip archive holding its pickled value. `.metadata`
(`formats/dcp_metadata.py`, read without unpickling) says where each item lies.

Each item is read as the zip it is, in place (`open_archive` over its byte range), by
ckpttool's own torch-zip reader: nothing is unpickled, a tensor chunk becomes a
`TensorRef` into the `.distcp` file and a non-tensor value the inert object it pickles.
A tensor saved in one chunk is that chunk's reference (its bytes are read, mapped and
copied like any torch-zip record); a tensor split across chunks (ranks, shards) is a
reference whose record gathers the chunks into one buffer on demand, one chunk read at
a time, so memory is bounded by the tensor. Every byte range is checked against its
file before anything is read: a missing data file, an item past the end (a truncated
file, a `.metadata` from another save) or a chunk whose stored shape or dtype is not the
one `.metadata` declares is a FormatError naming the file and the key.

The keys are put back into the nested state_dict they were flattened from (DCP's
planner_data), so `model.weight` is the `weight` of the `model` dict and an optimizer's
`state` and `param_groups` are found where `optimizer` looks for them. A Megatron-Core
`torch_dist` folder (or NeMo 2 checkpoint, whose `weights/` is one) is laid out as Megatron
loads it, with its `common.pt` (`formats/dcp_megatron.py`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from ckpttool.checkpoint import Checkpoint, Chunk, Record, Storage, TensorRef, contiguous_strides
from ckpttool.dtypes import DTYPES
from ckpttool.errors import FileAccessError, FormatError
from ckpttool.formatnames import DCP, DCP_METADATA_FILE
from ckpttool.formats.dcp_megatron import COMMON_NAME, common_path, is_torch_dist, megatron_root, unconvertible
from ckpttool.formats.dcp_metadata import (
    DcpChunk,
    DcpMetadata,
    DcpStorage,
    DcpTensor,
    Path,
    metadata_path,
    metadata_pickle,
    read_dcp_metadata,
)
from ckpttool.formats.torchzip import MAX_PICKLE_RECORD, read_torch_zip
from ckpttool.formats.ziparchive import ZIP_MAGIC, ZipArchive, open_archive, pread_exact, read_entry
from ckpttool.tensordata import ByteRange, direct_range, read_span

EXTRA_STATE = "._extra_state/"  # a module's extra state saved as a Megatron object entry
PICKLE_PROTO = b"\x80"  # the first opcode of every pickle of protocol 2 or later
MAX_NESTING = 64  # deeper planner paths are not a state_dict: the keys stay flat
_RANK_FILE = re.compile(r"__(\d+)_\d+\.distcp")  # FileSystemWriter's name: rank, then file number

__all__ = ["is_dcp_folder", "item_pickles", "metadata_pickle", "read_dcp", "read_dcp_tensors"]


def is_dcp_folder(path: str) -> bool:
    """A DCP folder, or a NeMo 2 checkpoint whose `weights/` is one."""
    return os.path.isdir(path) and os.path.isfile(metadata_path(path))


def read_dcp(path: str, meta: DcpMetadata | None = None) -> Checkpoint:
    """The checkpoint in the DCP folder `path`: metadata and item headers only, no tensor data.
    `meta`: its `.metadata`, when a scan of the same opening already read it."""
    return read_dcp_tensors(path, meta)[0]


def read_dcp_tensors(path: str, meta: DcpMetadata | None = None) -> tuple[Checkpoint, dict[str, TensorRef]]:
    """`read_dcp`, and each tensor by its DCP key (what `convert` copies out of the folder)."""
    meta = meta or read_dcp_metadata(path)
    folder = meta.folder
    files = DataFiles(folder)
    built = _Built()
    values: dict[str, Any] = {}
    for fqn in meta.order:
        if fqn in meta.tensors:
            values[fqn] = _tensor(meta.tensors[fqn], files, built)
        else:
            values[fqn] = _read_item(fqn, meta.entries[fqn].storage, files, built).root
    names = [DCP_METADATA_FILE, *meta.files]
    root = nest(values, meta.paths)
    megatron = is_torch_dist(folder, meta)
    if megatron:
        names += [COMMON_NAME] if common_path(folder) else []
        root, notes = megatron_root(values, meta, _common_state(folder, built))
        built.anomalies.extend(notes)
    checkpoint = Checkpoint(
        path=path,
        format=DCP,
        file_size=sum(os.path.getsize(os.path.join(folder, name)) for name in names),
        root=root,
        storages=built.storages,
        metadata=_metadata(meta),
        anomalies=built.anomalies,
        files=[os.path.join(folder, name) for name in names],
        chunks={fqn: [_chunk(c) for c in t.chunks] for fqn, t in meta.tensors.items()},
        unconvertible=unconvertible(meta) if megatron else {},
    )
    return checkpoint, {fqn: values[fqn] for fqn in meta.tensors}


def _metadata(meta: DcpMetadata) -> dict[str, str]:
    out = {k: v for k, v in (("version", meta.version), ("save_id", meta.save_id)) if v}
    if meta.save_plans:
        out["megatron save plans"] = str(meta.save_plans)
    for fqn, shape in meta.reformulated.items():
        out[f"flattened_range {fqn}"] = f"saved as {list(meta.tensors[fqn].shape)}, global shape {list(shape)}"
    return out


def _common_state(folder: str, built: _Built) -> Any:
    """Megatron's common.pt (a torch.save file), read as inert data, or None."""
    path = common_path(folder)
    if path is None:
        return None
    checkpoint = read_torch_zip(path)
    for key, storage in checkpoint.storages.items():
        storage.key = f"{COMMON_NAME}:{key}"
        built.storages[storage.key] = storage
    built.anomalies.extend(f"{COMMON_NAME}: {a}" for a in checkpoint.anomalies)
    return checkpoint.root


def _chunk(chunk: DcpChunk) -> Chunk:
    item = chunk.storage
    named = _RANK_FILE.fullmatch(item.file)
    rank = int(named.group(1)) if named else None
    return Chunk(chunk.offsets, chunk.sizes, item.file, item.offset, item.length, rank)


def item_pickles(path: str, meta: DcpMetadata | None = None) -> Iterator[tuple[str, bytes]]:
    """The bytes of every pickle stream the folder holds, for `scan` (each may hold several
    pickles one after another): `.metadata`, then, when it reads as DCP metadata, each
    item's `data.pkl`. A non-tensor entry that is no zip is handed over whole: `dcp.load`
    passes it to `torch.load(weights_only=False)`, whose legacy path unpickles it. A tensor
    item that is no zip is no pickle torch unpickles freely (FileSystemWriter's experimental
    safetensors serialisation writes those): left out. `meta`: the metadata the caller
    already read from the `.metadata` pickle it decoded itself; that stream is then not yielded."""
    if meta is None:
        yield metadata_pickle(path)
        meta = read_dcp_metadata(path)
    files = DataFiles(meta.folder)
    inside = "" if os.path.samefile(meta.folder, path) else f"{os.path.relpath(meta.folder, path)}/"  # NeMo 2
    common = common_path(meta.folder) if is_torch_dist(meta.folder, meta) else None
    if common is not None:
        yield from _archive_pickles(inside + COMMON_NAME, open_archive(common))
    for fqn, item, is_tensor in _items(meta):
        name = f"{inside}{item.file}[{item.offset}:{item.offset + item.length}] ({fqn})"
        start, _ = files.check(fqn, item)
        if files.read(item.file, start, min(4, item.length)) != ZIP_MAGIC:
            if not is_tensor:
                yield name, files.read(item.file, start, min(item.length, MAX_PICKLE_RECORD))
            continue
        archive = files.archive(fqn, item)
        yield from _archive_pickles(name, archive)
        if not is_tensor and EXTRA_STATE in fqn:
            yield from _embedded_pickles(name, archive)


def _archive_pickles(name: str, archive: ZipArchive) -> Iterator[tuple[str, bytes]]:
    entry = archive.record("data.pkl")
    if entry is not None:
        yield f"{name}:{entry.name}", read_entry(archive, entry, MAX_PICKLE_RECORD)


def _embedded_pickles(name: str, archive: ZipArchive) -> Iterator[tuple[str, bytes]]:
    """TransformerEngine keeps a module's extra state (FP8 scaling) as a uint8 tensor of
    `pickle.dumps` bytes, which its `set_extra_state` unpickles: a tensor record of an
    `_extra_state` object that starts like a pickle is scanned as the pickle it is."""
    records = f"{archive.root}/data/"
    for record in archive.order:
        if record.startswith(records) and archive.entries[record].size:
            data = read_entry(archive, archive.entries[record], MAX_PICKLE_RECORD)
            if data[:1] == PICKLE_PROTO:
                yield f"{name}:{record} (TransformerEngine extra state)", data


def _items(meta: DcpMetadata) -> Iterator[tuple[str, DcpStorage, bool]]:
    for fqn in meta.order:
        if fqn in meta.entries:
            yield fqn, meta.entries[fqn].storage, False
        else:
            yield from ((fqn, c.storage, True) for c in meta.tensors[fqn].chunks)


# -- data files ------------------------------------------------------------------------------------


class DataFiles:
    """The folder's data files, each checked to exist and measured once."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._sizes: dict[str, int] = {}

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def size(self, name: str) -> int:
        if name not in self._sizes:
            path = self.path(name)
            try:
                self._sizes[name] = os.path.getsize(path)
            except FileNotFoundError:
                raise FormatError(
                    f"data file {name} named in {DCP_METADATA_FILE} is missing", path=self.folder
                ) from None
            except OSError as exc:
                raise FileAccessError(f"cannot read {name}: {exc.strerror}", path=self.folder) from None
            if not os.path.isfile(path):
                raise FormatError(f"data file {name} named in {DCP_METADATA_FILE} is not a file", path=self.folder)
        return self._sizes[name]

    def check(self, fqn: str, item: DcpStorage) -> tuple[int, int]:
        """[start, end) of the item, refused unless it lies inside its file and is plain."""
        size = self.size(item.file)
        end = item.offset + item.length
        if end > size:
            raise FormatError(
                f"{fqn!r}: {DCP_METADATA_FILE} puts it at bytes [{item.offset}, {end}) of {item.file}, which holds "
                f"{size} bytes (truncated, or a {DCP_METADATA_FILE} of another save)",
                path=self.folder,
            )
        if item.transforms:
            raise FormatError(
                f"{fqn!r} is stored through DCP extensions ({', '.join(item.transforms)}), "
                "which ckpttool does not read",
                path=self.folder,
            )
        return item.offset, end

    def read(self, name: str, offset: int, size: int) -> bytes:
        with open(self.path(name), "rb") as f:
            return pread_exact(f.fileno(), offset, size)

    def archive(self, fqn: str, item: DcpStorage) -> ZipArchive:
        start, end = self.check(fqn, item)
        try:
            return open_archive(self.path(item.file), start, end)
        except FormatError as exc:
            raise FormatError(
                f"{fqn!r}: bytes [{start}, {end}) of {item.file} are not a torch.save archive ({exc.message})",
                path=self.folder,
            ) from None


@dataclass
class _Built:
    storages: dict[str, Storage] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)

    def add(self, fqn: str, item: DcpStorage, checkpoint: Checkpoint) -> None:
        """Keep an item's storages (keys unique across items) and anomalies; make its records
        name the key they hold, and find their bytes now, so that a header past the item's
        end is refused before any command reads."""
        for key, storage in checkpoint.storages.items():
            storage.key = f"{item.file}[{item.offset}]:{key}"  # every item numbers its storages from 0
            if storage.record is not None:
                storage.record.name = f"{item.file}[{item.offset}]:{storage.record.name}"
                storage.record.viewed_by = partial(_named, fqn)
                storage.record.data_offset()
            self.storages[storage.key] = storage
        self.anomalies.extend(f"{fqn!r}: {a}" for a in checkpoint.anomalies)


def _named(fqn: str) -> list[str]:
    return [fqn]


def _read_item(fqn: str, item: DcpStorage, files: DataFiles, built: _Built) -> Checkpoint:
    archive = files.archive(fqn, item)
    try:
        checkpoint = read_torch_zip(archive.path, archive)
    except FormatError as exc:
        raise FormatError(
            f"{fqn!r}: the item at byte {item.offset} of {item.file}: {exc.message}", path=files.folder
        ) from None
    built.add(fqn, item, checkpoint)
    return checkpoint


# -- tensors ----------------------------------------------------------------------------------------


def _tensor(tensor: DcpTensor, files: DataFiles, built: _Built) -> TensorRef:
    parts = [(chunk, _chunk_ref(tensor, chunk, files, built)) for chunk in tensor.chunks]
    filled = [(chunk, ref) for chunk, ref in parts if chunk.numel]
    if len(filled) == 1 and filled[0][0].sizes == tensor.shape:
        return filled[0][1]  # saved whole: the chunk is the tensor
    if not filled and parts:
        return parts[0][1]  # an empty tensor
    return _gathered(tensor, filled, files)


def _chunk_ref(tensor: DcpTensor, chunk: DcpChunk, files: DataFiles, built: _Built) -> TensorRef:
    root = _read_item(tensor.fqn, chunk.storage, files, built).root
    declared = f"{list(chunk.sizes)} {tensor.dtype}"
    item = f"{chunk.storage.file}, byte {chunk.storage.offset}"
    where = f"{tensor.fqn!r}: the chunk at offsets {list(chunk.offsets)} ({item})"
    if not isinstance(root, TensorRef) or root.layout != "strided":
        raise FormatError(f"{where} holds no dense tensor; {DCP_METADATA_FILE} declares {declared}", path=files.folder)
    if root.shape != chunk.sizes or root.dtype != tensor.dtype:
        raise FormatError(
            f"{where} holds {list(root.shape)} {root.dtype}; {DCP_METADATA_FILE} declares {declared}", path=files.folder
        )
    return root


def _gathered(tensor: DcpTensor, parts: list[tuple[DcpChunk, TensorRef]], files: DataFiles) -> TensorRef:
    """A tensor saved in several chunks: its record assembles them, one at a time."""
    if DTYPES[tensor.dtype].bits % 8:
        raise FormatError(f"{tensor.fqn!r}: chunks of {tensor.dtype} cannot be assembled", path=files.folder)
    shape = tensor.shape
    first = files.path(parts[0][0].storage.file) if parts else files.folder
    storage = Storage(tensor.fqn, tensor.dtype, _numel(shape), "cpu")
    storage.record = Record(first, f"{tensor.fqn} ({len(parts)} chunks)", 0, storage.nbytes)
    storage.record.gather = partial(gather, tensor, parts)
    storage.record.parts = partial(row_ranges, tensor, parts)
    storage.record.viewed_by = partial(_named, tensor.fqn)
    return TensorRef(tensor.dtype, shape, contiguous_strides(shape), 0, storage, tensor.requires_grad)


def row_ranges(tensor: DcpTensor, parts: list[tuple[DcpChunk, TensorRef]]) -> list[ByteRange] | None:
    """The tensor's bytes as plain byte ranges of its data files, in order, when its chunks are
    runs of whole rows (how FSDP and tensor parallelism split a matrix by its first axis), so
    that `convert` copies them file to file; None for any other split."""
    ranges: list[ByteRange] = []
    row, rest = 0, tensor.shape[1:]
    for chunk, ref in sorted(parts, key=lambda part: part[0].offsets[:1]):
        whole_rows = chunk.sizes[1:] == rest and not any(chunk.offsets[1:])
        span = direct_range(ref) if whole_rows and chunk.offsets[:1] == (row,) else None
        if span is None:
            return None
        ranges.append(span)
        row += chunk.sizes[0]
    return ranges if tensor.shape and row == tensor.shape[0] else None


def layer_of(ref: TensorRef, layer: int) -> TensorRef:
    """The slice `[layer]` along the first axis: for a tensor assembled from DCP chunks, one
    assembled from only the chunks that slice meets (so each layer reads its own bytes);
    otherwise a view of the same storage."""
    record = ref.storage.record if ref.storage is not None else None
    assembly = record.gather if record is not None else None
    if record is None or not (isinstance(assembly, partial) and assembly.func is gather):
        return _first_axis(ref, layer)
    tensor, parts = assembly.args
    sliced = DcpTensor(f"{tensor.fqn}[{layer}]", tensor.dtype, tensor.shape[1:], [], tensor.requires_grad)
    kept = [
        (DcpChunk(chunk.offsets[1:], chunk.sizes[1:], chunk.storage), _first_axis(part, layer - chunk.offsets[0]))
        for chunk, part in parts
        if chunk.offsets[0] <= layer < chunk.offsets[0] + chunk.sizes[0]
    ]
    return _gathered(sliced, kept, DataFiles(os.path.dirname(record.path)))


def _first_axis(ref: TensorRef, index: int) -> TensorRef:
    return replace(ref, shape=ref.shape[1:], stride=ref.stride[1:], offset=ref.offset + index * ref.stride[0])


def gather(tensor: DcpTensor, parts: list[tuple[DcpChunk, TensorRef]]) -> bytearray:
    """The tensor's contiguous little-endian bytes, each chunk copied into its box. Elements
    are handled as opaque groups of bytes (a trailing axis of itemsize), so every dtype
    takes the same path and numpy needs no type of its own for it."""
    import numpy as np
    from numpy.lib.stride_tricks import as_strided

    itemsize = DTYPES[tensor.dtype].itemsize
    out = bytearray(_numel(tensor.shape) * itemsize)
    whole = np.frombuffer(out, np.uint8).reshape(tensor.shape + (itemsize,))
    for chunk, ref in parts:
        data, first = read_span(ref)  # checks the chunk record's CRC-32
        flat = np.frombuffer(data, np.uint8)
        strides = tuple(s * itemsize for s in ref.stride) + (1,)
        source = as_strided(flat[(ref.offset - first) * itemsize :], ref.shape + (itemsize,), strides, writeable=False)
        box = tuple(slice(o, o + n) for o, n in zip(chunk.offsets, chunk.sizes, strict=True))
        whole[box] = _little_endian(source, ref, tensor.fqn)
        del data, flat, source
    return out


def _little_endian(source: Any, ref: TensorRef, fqn: str) -> Any:
    storage = ref.storage
    if storage is None or storage.byteorder == "little" or ref.itemsize == 1:
        return source
    if DTYPES[ref.dtype].kind == "complex":
        raise FormatError(f"{fqn!r}: a big-endian complex chunk cannot be assembled")
    return source[..., ::-1]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- the nested state_dict -------------------------------------------------------------------------


def nest(values: dict[str, Any], paths: dict[str, Path]) -> Any:
    """The state_dict DCP flattened, rebuilt from each key's path (dict keys, list indices);
    the flat dict when there are no paths or they do not describe one tree."""
    if set(paths) != set(values) or any(not 0 < len(p) <= MAX_NESTING for p in paths.values()):
        return values
    root: dict[Any, Any] = {}
    for fqn in paths:  # the order the state_dict had, where .metadata lists items as they were written
        value = values[fqn]
        node = root
        *parents, last = paths[fqn]
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                return values
            node = child
        if last in node:
            return values
        node[last] = value
    return _with_lists(root)


def _with_lists(root: dict[Any, Any]) -> dict[Any, Any]:
    """Dicts keyed 0..n-1 by ints were lists (param_groups): made lists again, bottom up."""
    pending: list[tuple[dict[Any, Any], Any, dict[Any, Any]]] = []
    stack = [(root, None, root)]
    while stack:
        node, key, parent = stack.pop()
        pending.append((node, key, parent))
        stack.extend((child, k, node) for k, child in node.items() if isinstance(child, dict))
    for node, key, parent in reversed(pending):
        keys = list(node)
        if node is not root and keys and all(type(k) is int for k in keys) and sorted(keys) == list(range(len(keys))):
            parent[key] = [node[i] for i in range(len(keys))]
    return root
