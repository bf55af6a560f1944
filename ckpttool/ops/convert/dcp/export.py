"""`convert` out of a DCP folder: its weights as safetensors (sharded, with the Hugging Face
index) or a torch `.pth`, each byte of the data files read once.

The folder is read by ckpttool's own DCP reader (`formats/dcp.py`: `.metadata` and every
item's pickle through the code-free machine, nothing unpickled, every item checked against
its file). A tensor whose chunks are runs of whole rows (saved whole, or split by its first
axis as FSDP and tensor parallelism split a matrix) is copied file to file by the kernel,
chunk by chunk, into its place in the output, never through Python memory; its copy is
verified by one CRC-32 pass over the output against each chunk's recorded CRC-32, which also
vouches for the source. Any other tensor (cast, or split along another axis) is assembled
in memory, one tensor at a time, and its written bytes checked against the CRC-32 of what
was assembled. Non-tensor entries are never loaded. Under torchrun the ranks share the
shards (or, for one safetensors file, the tensors, each written in place at the offset the
header fixes), verify what they wrote, and rank 0 lands every file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ckpttool.atomic import OutputSet, PendingOutput, output_set, replace_all
from ckpttool.checkpoint import Checkpoint, TensorRef, byte_size
from ckpttool.crc import crc32 as crc32_of
from ckpttool.dtypes import DTYPES
from ckpttool.errors import (
    FormatError,
    UsageError,
    VerificationError,
    WeightsNotFoundError,
    about,
)
from ckpttool.formats.dcp import layer_of, read_dcp_tensors
from ckpttool.formats.dcp_megatron import refuse_unconvertible
from ckpttool.ops.convert.dcp.groups import groups
from ckpttool.ops.convert.dcp.ranks import Ranks, together
from ckpttool.ops.convert.plan import ConvertOptions, ConvertReport, rename, shard_paths
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
from ckpttool.tensordata import (
    ByteRange,
    cast,
    chunks,
    copy_matches_record,
    crc32,
    direct_range,
    direct_ranges,
    load_tensor,
    same_bytes,
    tensor_bytes,
)
from ckpttool.weights import find_weights, join

if TYPE_CHECKING:
    import torch


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

    def of(self, stored: TensorRef) -> TensorRef:
        return stored if self.layer is None else layer_of(stored, self.layer)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def convert_from_dcp(src: str, dst: str, options: ConvertOptions, progress: Progress) -> ConvertReport:
    if options.dedupe:
        raise UsageError("--dedupe: a DCP checkpoint holds no tied tensors")
    ranks = options.ranks
    refs, tensors, root, notes = _dcp_plan(src, options)
    shards = list(groups(tensors, lambda t: t.nbytes, options.shard_size)) if options.shard_size else [tensors]
    paths = shard_paths(dst, len(shards))
    index = dst + ".index.json" if len(shards) > 1 else None
    mine = ranks.share(list(zip(paths, shards, strict=True)), lambda p: sum(t.nbytes for t in p[1]))
    with output_set([src], options.force) as outs:
        for path in [*paths, *([index] if index else [])]:  # refuse before writing anything
            outs.check_destination(path)
        writer = _ShardWriter(src, refs, options, progress)
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


def _dcp_plan(src: str, options: ConvertOptions) -> tuple[dict[str, TensorRef], list[DcpTensor], str, list[str]]:
    checkpoint, refs = read_dcp_tensors(src)
    root, chosen = _weights(checkpoint, list(refs), options.root)
    refuse_unconvertible(checkpoint, [fqn for _, fqn in chosen])
    slices = _layers(chosen, {fqn: ref.shape for fqn, ref in refs.items()}, options.unstack)
    notes: list[str] = []
    names = rename([key for key, _, _ in slices], options.strip_prefixes, options.renames, notes)
    out = []
    for name, (_, fqn, layer) in zip(names, slices, strict=True):
        source_dtype = refs[fqn].dtype
        dtype = options.dtype if options.dtype and DTYPES[source_dtype].is_floating else source_dtype
        refuse_unstorable(name, dtype, options.to)
        stored = refs[fqn].shape
        if layer is None:
            out.append(DcpTensor(name, fqn, source_dtype, dtype, stored))
        else:
            out.append(DcpTensor(name, fqn, source_dtype, dtype, stored[1:], layer, stored))
    return refs, out, root, notes


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


# By output name: the CRC-32 of the bytes written from memory, or the ranges copied file to file.
Written = dict[str, int | list[ByteRange]]


class _ShardWriter:
    """Writes this rank's shards, each tensor copied out of the data files, and verifies them."""

    def __init__(self, src: str, refs: dict[str, TensorRef], options: ConvertOptions, progress: Progress) -> None:
        self.src, self.refs, self.options, self.progress = src, refs, options, progress

    def write_all(self, outs: OutputSet, mine: list[tuple[str, list[DcpTensor]]], index: str | None,
                  paths: list[str], shards: list[list[DcpTensor]]) -> None:  # fmt: skip
        for path, shard in mine:
            self.progress.start(sum(t.nbytes for t in shard))  # one bar per file
            output = outs.open(path)
            written = self._write(output, shard)
            output.seal()
            with about(output.final):
                self._verify(output.temp, shard, written)
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
            written: Written = {}
            with open(temp, "r+b") as f:
                for tensor in mine:
                    written[tensor.name] = self._put(tensor, f.fileno(), offsets[tensor.name])
            with about(path):
                self._verify(temp, shard, written, mine)

        together(ranks, write_mine)

    def _start_file(self, outs: OutputSet, path: str, header: bytes, size: int) -> str:
        output = outs.open(path)
        output.handle.write(header)
        output.handle.truncate(size)
        output.seal()
        return output.temp

    def _put(self, tensor: DcpTensor, fd: int, position: int) -> int | list[ByteRange]:
        """The tensor's output bytes at `position` of `fd`: its chunks copied file to file where
        they are plain runs of rows of the same dtype, else assembled in memory and written."""
        with about(self.src):
            pieces = self._pieces(tensor)
            if pieces is not None:
                for piece in pieces:
                    _copy_at(piece, fd, position)
                    position += piece.size
            else:
                data = tensor_bytes(self._loaded(tensor))
                _write_at(data, fd, position)
        self.progress.advance(tensor.nbytes)
        return pieces if pieces is not None else crc32_of(data)

    def _pieces(self, tensor: DcpTensor) -> list[ByteRange] | None:
        """The byte ranges of the data files that are the tensor's output bytes, in order, when
        there are such (no cast; chunks that are runs of whole rows)."""
        if tensor.dtype != tensor.source_dtype:
            return None
        return direct_ranges(tensor.of(self.refs[tensor.fqn]))

    def _loaded(self, tensor: DcpTensor) -> torch.Tensor:
        """The tensor in its output dtype, assembled from its chunks (each checked against its
        CRC-32 as it is read)."""
        return cast(load_tensor(tensor.of(self.refs[tensor.fqn])), tensor.dtype)

    def _write(self, output: PendingOutput, shard: list[DcpTensor]) -> Written:
        written: Written = {}
        if self.options.to == SAFETENSORS:
            from ckpttool.formats.safetensors import header_bytes

            entries = [(t.name, t.dtype, t.shape, t.nbytes) for t in shard]
            header = header_bytes(entries, self._metadata())
            output.handle.write(header)
            output.handle.flush()  # the tensors are written at their offsets, past the buffer
            position = len(header)
            for tensor in shard:
                written[tensor.name] = self._put(tensor, output.handle.fileno(), position)
                position += tensor.nbytes
        else:
            _write_pth(output, shard, self._records(shard), written)
        return written

    def _records(self, shard: list[DcpTensor]) -> Iterator[tuple[DcpTensor, ByteRange | memoryview]]:
        """Each tensor's `.pth` record: a whole chunk record with its CRC-32 (copied file to
        file under that CRC), or bytes assembled in memory."""
        for tensor in shard:
            with about(self.src):
                pieces = self._pieces(tensor)
                whole = pieces is not None and len(pieces) == 1 and _record_crc(pieces[0]) is not None
                payload = pieces[0] if pieces is not None and whole else tensor_bytes(self._loaded(tensor))
            yield tensor, payload
            self.progress.advance(tensor.nbytes)

    def _metadata(self) -> dict[str, str]:
        return safetensors_metadata(self.options.metadata)

    def _verify(self, path: str, shard: list[DcpTensor], written: Written, mine: list[DcpTensor] | None = None) -> None:
        """The file reads back (through the safetensors library, or torch.load(weights_only=True))
        with the planned keys, dtypes and shapes, and the bytes of each tensor written here
        (`mine`, by default all) are the chunks copied, or the bytes assembled."""
        if self.options.to == SAFETENSORS:
            from ckpttool.formats.safetensors import read_safetensors

            check_safetensors_header(path, [(t.name, t.dtype, t.shape) for t in shard], self._metadata())
            tensors = read_safetensors(path).root
        else:
            from ckpttool.formats.torchzip import read_torch_zip
            from ckpttool.ops.safety.trust import torch_accepts

            torch_accepts(path, {t.name: (t.dtype, t.shape) for t in shard})
            tensors = read_torch_zip(path).root
        for tensor in shard if mine is None else mine:
            span = direct_range(tensors[tensor.name])
            expected = written[tensor.name]
            if span is None or not _holds(span, expected, path):
                raise VerificationError(f"tensor {tensor.name!r} does not read back equal to the checkpoint")


def _holds(span: ByteRange, expected: int | list[ByteRange], path: str) -> bool:
    """Whether the written `span` holds what was written: bytes of that CRC-32, or the copied
    ranges one after another. A copied chunk whose copy has the chunk's recorded CRC-32 is
    shown equal by that pass alone; any other is compared with its source, which refuses a
    source chunk that fails its own CRC-32 as damaged input."""
    if isinstance(expected, int):
        return crc32(span) == expected
    done = 0
    for piece in expected:
        copy = ByteRange(path, span.offset + done, piece.size)
        if not (copy_matches_record(piece, copy) or same_bytes(piece, copy)):
            return False
        done += piece.size
    return done == span.size


def _record_crc(span: ByteRange) -> int | None:
    """The CRC-32 torch.save recorded for exactly these bytes (a whole stored record), if any."""
    record = span.record
    if record is None or not record.crc or record.compressed or record.gather is not None:
        return None
    return record.crc if (span.offset, span.size) == (record.data_offset(), record.size) else None


def _copy_at(piece: ByteRange, fd: int, position: int) -> None:
    """The piece's bytes at `position` of `fd`, copied by the kernel where the filesystem allows."""
    with open(piece.path, "rb") as source:
        done = 0
        try:
            while done < piece.size:
                n = os.copy_file_range(source.fileno(), fd, piece.size - done, piece.offset + done, position + done)
                if n == 0:
                    raise FormatError(f"file ends at byte {piece.offset + done}", path=piece.path)
                done += n
        except OSError:  # filesystems without copy_file_range: copy through a buffer
            rest = ByteRange(piece.path, piece.offset + done, piece.size - done)
            for block in chunks(rest):
                _write_at(block, fd, position + done)
                done += len(block)


def _write_at(data: bytes | memoryview, fd: int, position: int) -> None:
    view, done = memoryview(data).cast("B"), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], position + done)


def _write_index(outs: OutputSet, path: str, paths: list[str], shards: list[list[DcpTensor]]) -> None:
    weight_map = shard_of(paths, [[t.name for t in shard] for shard in shards])
    write_index(outs, path, weight_map, sum(t.nbytes for s in shards for t in s))


def _write_pth(output: PendingOutput, shard: list[DcpTensor],
               data: Iterator[tuple[DcpTensor, ByteRange | memoryview]], written: Written) -> None:  # fmt: skip
    from ckpttool.formats.torchzip_write import StorageRecord, root_folder

    planned = [pth_tensor(t.name, t.dtype, t.shape, str(i), _numel(t.shape)) for i, t in enumerate(shard)]
    keys = {t.name: str(i) for i, t in enumerate(shard)}

    def records() -> Iterator[StorageRecord]:
        for tensor, payload in data:
            if isinstance(payload, ByteRange):
                written[tensor.name] = [payload]
                yield StorageRecord(keys[tensor.name], span=payload, crc=_record_crc(payload))
            else:
                written[tensor.name] = crc32_of(payload)
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
