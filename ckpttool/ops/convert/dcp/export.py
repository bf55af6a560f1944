"""`convert` out of a DCP folder: its weights as safetensors (sharded, with the Hugging Face
index) or a torch `.pth`, loaded through DCP a bounded group at a time.

`.metadata` is never unpickled (`dcp/meta.py`); DCP's own `FileSystemReader` (with the
rebuilt metadata) and `DefaultLoadPlanner` fill preallocated tensors, one group of keys per
`dcp.load` call, and each group is streamed into the file being written. Non-tensor entries
are never loaded (DCP would `torch.load` them with weights_only=False). Under torchrun the
ranks share the shards (or, for one safetensors file, the tensors, each written in place at
the offset the header fixes), verify what they wrote, and rank 0 lands every file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpttool.atomic import OutputSet, PendingOutput, output_set, replace_all
from ckpttool.checkpoint import Checkpoint, byte_size
from ckpttool.crc import crc32 as crc32_of
from ckpttool.dtypes import DTYPES
from ckpttool.errors import (
    FormatError,
    UsageError,
    VerificationError,
    WeightsNotFoundError,
    about,
)
from ckpttool.formats.dcp_megatron import refuse_unconvertible
from ckpttool.ops.convert.dcp.groups import groups, load_group
from ckpttool.ops.convert.dcp.meta import read_checked
from ckpttool.ops.convert.dcp.ranks import Ranks, together
from ckpttool.ops.convert.plan import (
    ConvertOptions,
    ConvertReport,
    rename,
    shard_paths,
)
from ckpttool.ops.convert.targets import SAFETENSORS
from ckpttool.ops.convert.unstack import layer_names
from ckpttool.ops.convert.writers import (
    check_safetensors_header,
    pth_tensor,
    refuse_unstorable,
    safetensors_metadata,
    shard_of,
    write_index,
    write_pth,
)
from ckpttool.progress import Progress
from ckpttool.signals import held
from ckpttool.tensordata import cast, crc32, direct_range, tensor_bytes
from ckpttool.weights import find_weights, join

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import Metadata


# -- out of DCP --------------------------------------------------------------------------------


@dataclass
class DcpTensor:
    name: str  # in the output
    fqn: str  # in the checkpoint
    source_dtype: str
    dtype: str
    shape: tuple[int, ...]
    layer: int | None = None  # --unstack: this tensor is slice [layer] of the stored one
    stored: tuple[int, ...] | None = None  # the stored shape, when it is a slice

    @property
    def nbytes(self) -> int:
        return byte_size(_numel(self.shape), self.dtype)

    def of(self, loaded: Any) -> Any:
        return loaded if self.layer is None else loaded[self.layer]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def convert_from_dcp(src: str, dst: str, options: ConvertOptions, progress: Progress) -> ConvertReport:
    if options.dedupe:
        raise UsageError("--dedupe: a DCP checkpoint holds no tied tensors")
    ranks = options.ranks
    metadata, tensors, root, notes = _dcp_plan(src, options)
    shards = list(groups(tensors, lambda t: t.nbytes, options.shard_size)) if options.shard_size else [tensors]
    paths = shard_paths(dst, len(shards))
    index = dst + ".index.json" if len(shards) > 1 else None
    mine = ranks.share(list(zip(paths, shards, strict=True)), lambda p: sum(t.nbytes for t in p[1]))
    with output_set([src], options.force) as outs:
        for path in [*paths, *([index] if index else [])]:  # refuse before writing anything
            outs.check_destination(path)
        writer = _ShardWriter(src, metadata, options, progress)
        if ranks.distributed and len(shards) == 1 and options.to == SAFETENSORS:
            writer.write_together(outs, ranks, paths[0], shards[0])
        else:
            together(ranks, lambda: writer.write_all(outs, mine, index if ranks.leader else None, paths, shards))
        _land_files(outs, ranks)
    return ConvertReport(
        source=src,
        outputs=[*paths, *([index] if index else [])],
        format=options.to,
        weights_root=root,
        tensors=len(tensors),
        bytes=sum(t.nbytes for t in tensors),
        cast=sum(t.dtype != t.source_dtype for t in tensors),
        notes=notes,
    )


def _dcp_plan(src: str, options: ConvertOptions) -> tuple[Metadata, list[DcpTensor], str, list[str]]:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    checkpoint, metadata = read_checked(src)
    entries = metadata.state_dict_metadata
    tensors = {fqn: md for fqn, md in entries.items() if isinstance(md, TensorStorageMetadata)}
    root, chosen = _weights(checkpoint, list(tensors), options.root)
    refuse_unconvertible(checkpoint, [fqn for _, fqn in chosen])
    slices = _layers(chosen, {fqn: tuple(md.size) for fqn, md in tensors.items()}, options.unstack)
    notes: list[str] = []
    names = rename([key for key, _, _ in slices], options.strip_prefixes, options.renames, notes)
    out = []
    for name, (_, fqn, layer) in zip(names, slices, strict=True):
        md = tensors[fqn]
        source_dtype = str(md.properties.dtype).removeprefix("torch.")
        dtype = options.dtype if options.dtype and DTYPES[source_dtype].is_floating else source_dtype
        refuse_unstorable(name, dtype, options.to)
        stored = tuple(md.size)
        if layer is None:
            out.append(DcpTensor(name, fqn, source_dtype, dtype, stored))
        else:
            out.append(DcpTensor(name, fqn, source_dtype, dtype, stored[1:], layer, stored))
    return metadata, out, root, notes


def _layers(
    chosen: list[tuple[str, str]], shapes: dict[str, tuple[int, ...]], unstack: bool
) -> list[tuple[str, str, int | None]]:
    """(output key, DCP key, layer): with --unstack, a stacked tensor becomes its layers."""
    out: list[tuple[str, str, int | None]] = []
    for key, fqn in chosen:
        names = layer_names(key, shapes[fqn]) if unstack else None
        out.extend([(key, fqn, None)] if names is None else [(n, fqn, i) for i, n in enumerate(names)])
    return out


def _weights(checkpoint: Checkpoint, fqns: list[str], root: str | None) -> tuple[str, list[tuple[str, str]]]:
    """(root, [(output key, DCP key)]): the weights root `inspect` shows (or `--root`), found
    the same way as in every other format; a `--root` that is no state_dict may name any
    prefix of the flattened DCP keys (`optim.state`, or '' for every tensor)."""
    try:
        weights = find_weights(checkpoint.root, root)
    except WeightsNotFoundError:
        if root is None:
            raise
        weights = None
    known = set(fqns)
    if weights is not None and weights.root is not None:
        chosen = [(t.key, join(weights.root, t.key)) for t in weights.tensors]
        if all(fqn in known for _, fqn in chosen):
            return weights.root, chosen
    if root is None:
        raise WeightsNotFoundError("no weights found; name them with --root", path=checkpoint.path)
    prefix = f"{root}." if root else ""
    chosen = [(fqn[len(prefix) :], fqn) for fqn in fqns if fqn.startswith(prefix)]
    if not chosen:
        raise WeightsNotFoundError(f"no tensors under {root!r}", path=checkpoint.path)
    return root, chosen


class _ShardWriter:
    """Writes this rank's shards, each filled group by group from DCP, and verifies them."""

    def __init__(self, src: str, metadata: Metadata, options: ConvertOptions, progress: Progress) -> None:
        self.src, self.metadata, self.options, self.progress = src, metadata, options, progress

    def write_all(self, outs: OutputSet, mine: list[tuple[str, list[DcpTensor]]], index: str | None,
                  paths: list[str], shards: list[list[DcpTensor]]) -> None:  # fmt: skip
        for path, shard in mine:
            self.progress.start(sum(t.nbytes for t in shard))  # one bar per file
            output = outs.open(path)
            crcs = self._write(output, shard)
            output.seal()
            with about(output.final):
                self._verify(output.temp, shard, crcs)
        if index:
            _write_index(outs, index, paths, shards)

    def write_together(self, outs: OutputSet, ranks: Ranks, path: str, shard: list[DcpTensor]) -> None:
        """One safetensors file written by every rank: its header fixes each tensor's offset, so
        rank 0 writes the header and sizes the file, and each rank writes its share of the
        tensors in place and verifies them."""
        from ckpttool.formats.safetensors import header_bytes

        header = header_bytes([(t.name, t.dtype, t.shape, t.nbytes) for t in shard], self._metadata())
        offsets, end = {}, len(header)
        for tensor in shard:
            offsets[tensor.name], end = end, end + tensor.nbytes
        temp = together(ranks, lambda: self._start_file(outs, path, header, end) if ranks.leader else None)
        temp = ranks.broadcast(temp)
        mine = ranks.share(shard, lambda t: t.nbytes)
        self.progress.start(sum(t.nbytes for t in mine))

        def write_mine() -> None:
            crcs: dict[str, int] = {}
            with open(temp, "r+b") as f:
                for tensor, data in self._tensors(mine):
                    f.seek(offsets[tensor.name])
                    f.write(data)
                    crcs[tensor.name] = crc32_of(data)
            with about(path):
                self._verify(temp, shard, crcs, mine)

        together(ranks, write_mine)

    def _start_file(self, outs: OutputSet, path: str, header: bytes, size: int) -> str:
        output = outs.open(path)
        output.handle.write(header)
        output.handle.truncate(size)
        output.seal()
        return output.temp

    def _tensors(self, shard: list[DcpTensor]) -> Iterator[tuple[DcpTensor, memoryview]]:
        """Each tensor's output bytes, in order, loaded a bounded group at a time."""
        for group in groups(shard, lambda t: t.nbytes):
            wanted = {t.fqn: (t.source_dtype, t.stored or t.shape) for t in group}
            last = {t.fqn: i for i, t in enumerate(group)}  # a stacked tensor's layers share one load
            with about(self.src):
                loaded = _load_or_explain(self.src, self.metadata, wanted)
            for i, tensor in enumerate(group):
                value = loaded.pop(tensor.fqn) if last[tensor.fqn] == i else loaded[tensor.fqn]
                yield tensor, tensor_bytes(cast(tensor.of(value), tensor.dtype))
                self.progress.advance(tensor.nbytes)

    def _write(self, output: PendingOutput, shard: list[DcpTensor]) -> dict[str, int]:
        crcs: dict[str, int] = {}
        if self.options.to == SAFETENSORS:
            from ckpttool.formats.safetensors import header_bytes

            entries = [(t.name, t.dtype, t.shape, t.nbytes) for t in shard]
            output.handle.write(header_bytes(entries, self._metadata()))
            for tensor, data in self._tensors(shard):
                output.handle.write(data)
                crcs[tensor.name] = crc32_of(data)
        else:
            _write_pth(output, shard, self._tensors(shard), crcs)
        return crcs

    def _metadata(self) -> dict[str, str]:
        return safetensors_metadata(self.options.metadata)

    def _verify(
        self, path: str, shard: list[DcpTensor], crcs: dict[str, int], written: list[DcpTensor] | None = None
    ) -> None:
        """The file reads back (through the safetensors library, or torch.load(weights_only=True))
        with the planned keys, dtypes and shapes, and the bytes of each tensor written here
        (`written`, by default all) are the ones DCP loaded."""
        if self.options.to == SAFETENSORS:
            from ckpttool.formats.safetensors import read_safetensors

            check_safetensors_header(path, [(t.name, t.dtype, t.shape) for t in shard], self._metadata())
            tensors = read_safetensors(path).root
        else:
            from ckpttool.formats.torchzip import read_torch_zip
            from ckpttool.ops.safety.trust import torch_accepts

            torch_accepts(path, {t.name: (t.dtype, t.shape) for t in shard})
            tensors = read_torch_zip(path).root
        for tensor in shard if written is None else written:
            span = direct_range(tensors[tensor.name])
            if span is None or crc32(span) != crcs[tensor.name]:
                raise VerificationError(f"tensor {tensor.name!r} does not read back as DCP loaded it")


def _write_index(outs: OutputSet, path: str, paths: list[str], shards: list[list[DcpTensor]]) -> None:
    weight_map = shard_of(paths, [[t.name for t in shard] for shard in shards])
    write_index(outs, path, weight_map, sum(t.nbytes for s in shards for t in s))


def _load_or_explain(src: str, metadata: Metadata, wanted: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, Any]:
    """DCP's errors (a chunk that does not unpickle as a tensor, sizes that disagree) as one line."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        return load_group(src, metadata, wanted)
    except (CheckpointException, RuntimeError, ValueError, AssertionError, OSError) as exc:
        first = str(exc).strip().splitlines()
        raise FormatError(f"DCP cannot read the data files: {first[-1] if first else type(exc).__name__}") from None


def _write_pth(output: PendingOutput, shard: list[DcpTensor], data: Iterator[tuple[DcpTensor, memoryview]],
               crcs: dict[str, int]) -> None:  # fmt: skip
    from ckpttool.formats.torchzip_write import StorageRecord, root_folder

    planned = [pth_tensor(t.name, t.dtype, t.shape, str(i), _numel(t.shape)) for i, t in enumerate(shard)]
    keys = {t.name: str(i) for i, t in enumerate(shard)}

    def records() -> Iterator[StorageRecord]:
        for tensor, payload in data:
            crcs[tensor.name] = crc32_of(payload)
            yield StorageRecord(keys[tensor.name], data=payload)

    write_pth(output.handle, root_folder(output.final), planned, records())


def _land_files(outs: OutputSet, ranks: Ranks) -> None:
    """Every rank's verified files land together, renamed by rank 0, or none does."""
    moves = [move for part in ranks.gather([(p.temp, p.final) for p in outs.pending]) for move in part]

    def land() -> None:
        if ranks.leader:
            try:
                replace_all(moves)
            except BaseException:
                with held():
                    for temp, _ in moves:
                        with contextlib.suppress(OSError):
                            os.unlink(temp)
                raise

    together(ranks, land)
    outs.pending.clear()  # landed; nothing left to remove
