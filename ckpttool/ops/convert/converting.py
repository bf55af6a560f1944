"""`convert`: the weights of any checkpoint as safetensors or a plain torch state_dict.

The source is read without executing it (a whole pickled model converts without its
class), the weights root found or given, names stripped or renamed, floating tensors
optionally cast. Each output is written to a temporary file, verified against the
source tensor by tensor (bit-exact, or exactly the cast value), then renamed into
place; on any failure nothing is left at the destination and the source is never
touched. A source record that fails its CRC-32 is refused (IntegrityError) before
anything lands. Contiguous tensors are copied file to file; others are read one at a time,
so memory stays bounded by the largest tensor.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO

from ckpttool.atomic import OutputSet, created_folders, output_set
from ckpttool.checkpoint import TensorRef
from ckpttool.errors import IntegrityError, UsageError, VerificationError, about
from ckpttool.formats.safetensors import header_bytes, read_safetensors
from ckpttool.formats.torchzip import read_torch_zip
from ckpttool.formats.torchzip_write import PlannedTensor, StorageRecord, root_folder
from ckpttool.ops.convert.plan import (
    ConvertOptions,
    ConvertReport,
    OutputTensor,
    plan_outputs,
    shard_outputs,
    shard_paths,
    weight_sources,
)
from ckpttool.ops.convert.sources import FileSource
from ckpttool.ops.convert.targets import PTH, SAFETENSORS
from ckpttool.ops.convert.writers import (
    check_safetensors_header,
    pth_tensor,
    safetensors_metadata,
    shard_of,
    write_index,
    write_pth,
)
from ckpttool.progress import NoProgress, Progress
from ckpttool.tensordata import (
    ByteRange,
    copy_matches_record,
    copy_range,
    crc32,
    range_equals,
    recorded_crc,
    same_bytes,
    verify_tensor,
)


def destination_folder(dst: str) -> contextlib.AbstractContextManager[None]:
    """The folder `dst` goes into, created when missing (shards and their index into `out/`),
    and removed again, as far as it was created here and is still empty, when the conversion fails."""
    return created_folders(os.path.dirname(os.path.abspath(dst)))


def convert(src: str, dst: str, options: ConvertOptions, progress: Progress | None = None) -> ConvertReport:
    """The weights of `src` written to `dst`, verified; `dst`'s folder is created if missing."""
    with destination_folder(dst):
        return _convert(src, dst, options, progress)


def _convert(src: str, dst: str, options: ConvertOptions, progress: Progress | None) -> ConvertReport:
    from ckpttool.ops.convert.dcp.into import convert_dcp

    dcp_report = convert_dcp(src, dst, options, progress or NoProgress())  # into or out of a DCP folder
    if dcp_report is not None:
        return dcp_report
    if options.to == PTH and dst.endswith(".safetensors"):
        # torch.load reads any *.safetensors file as safetensors, so it could not load this one
        raise UsageError(f"{dst}: a .pth written under a .safetensors name; name it .pth or use --to safetensors")
    sources, weights_root, notes = weight_sources(src, options)
    outputs = plan_outputs(sources, options, notes)
    shards = shard_outputs(outputs, options.shard_size)
    paths = shard_paths(dst, len(shards))
    index = [dst + ".index.json"] if len(shards) > 1 else []
    progress = progress or NoProgress()
    progress.start(sum(o.nbytes for o in outputs))
    with output_set([src], options.force) as outs:
        for path in paths + index:  # refuse before writing anything
            outs.check_destination(path)
        for path, shard in zip(paths, shards, strict=True):
            _write_and_verify(outs, path, shard, options, progress)
        if index:
            _write_index(outs, dst, paths, shards)
        _verify_sources(outputs)
        written = [p.final for p in outs.pending]
        outs.commit()
    return ConvertReport(
        source=src,
        outputs=written,
        format=options.to,
        weights_root=weights_root,
        tensors=sum(len(o.names) for o in outputs),
        bytes=sum(o.nbytes for o in outputs),
        aliases={alias: o.name for o in outputs for _, alias in o.aliases},
        cast=sum(o.dtype != o.source.dtype for o in outputs),
        notes=notes,
    )


# -- writing and verifying -------------------------------------------------------------------------


def _write_and_verify(
    outs: OutputSet, path: str, shard: list[OutputTensor], options: ConvertOptions, progress: Progress
) -> None:
    output = outs.open(path)
    if options.to == SAFETENSORS:
        copied = _write_safetensors(output.handle, shard, options.metadata, progress)
    else:
        _write_pth(output.handle, root_folder(path), shard, progress)
    output.seal()
    with about(output.final):  # the temporary file is gone by the time anyone reads this
        if options.to == SAFETENSORS:
            _verify_safetensors(output.temp, shard, _metadata(shard, options.metadata), copied)
        else:
            _verify_pth(output.temp, shard)


def _metadata(shard: list[OutputTensor], user: dict[str, str]) -> dict[str, str]:
    return safetensors_metadata(user, {alias: o.name for o in shard for _, alias in o.aliases})


def _write_safetensors(
    f: BinaryIO, shard: list[OutputTensor], user_metadata: dict[str, str], progress: Progress
) -> dict[str, int]:
    """Returns the CRC-32 of each tensor copied from bytes the source records none for."""
    entries = [(o.name, o.dtype, o.source.shape, o.nbytes) for o in shard]
    f.write(header_bytes(entries, _metadata(shard, user_metadata)))
    copied: dict[str, int] = {}
    for output in shard:
        crc = _write_data(f, output)
        if crc is not None:
            copied[output.name] = crc
        progress.advance(output.nbytes)
    return copied


def _write_data(f: BinaryIO, output: OutputTensor) -> int | None:
    """A whole zip record is copied by the kernel (its recorded CRC-32 verifies the copy);
    bytes with no CRC recorded (legacy and safetensors sources, part of a record) are copied
    through a buffer that takes theirs in the same pass, so the output is verified without
    reading the source again. Returns that CRC-32."""
    pieces = output.pieces()
    if pieces is None:
        f.write(output.expected())
        return None
    if len(pieces) == 1 and recorded_crc(pieces[0]) is not None:
        copy_range(pieces[0], f)
        return None
    f.flush()
    crc = 0
    for piece in pieces:
        crc = crc32(piece, f, crc)
    return crc


def _verify_safetensors(path: str, shard: list[OutputTensor], metadata: dict[str, str], copied: dict[str, int]) -> None:
    # The reference implementation parses and validates the header we wrote...
    check_safetensors_header(path, [(o.name, o.dtype, o.source.shape) for o in shard], metadata)
    # ...and every tensor's bytes must be the source's (or the cast of them).
    tensors = read_safetensors(path).root
    for output in shard:
        _verify_bytes(path, output, _whole(tensors[output.name]), copied.get(output.name))


def _whole(tensor: TensorRef) -> ByteRange:
    from ckpttool.tensordata import direct_range

    span = direct_range(tensor)
    assert span is not None  # files we wrote are contiguous and little-endian
    return span


def _verify_bytes(path: str, output: OutputTensor, written: ByteRange, copied: int | None) -> None:
    """`copied`: the CRC-32 of the source bytes taken as they were copied, when the source
    records none for them."""
    pieces = output.pieces()
    if pieces is not None and len(pieces) == 1 and copy_matches_record(pieces[0], written):
        return  # the copy's CRC-32 is the source record's: neither needs reading again
    if copied is not None:
        if not reads_back_as_copied(written, copied):
            raise VerificationError(f"tensor {output.name!r} does not read back as it was copied")
        return
    try:
        equal = _same_pieces(pieces, written) if pieces is not None else range_equals(written, output.expected())
    except IntegrityError as exc:
        if exc.path != path:
            raise  # a source record fails its CRC-32: refused as damaged input
        equal = False  # what we wrote fails the CRC-32 we gave it
    if not equal:
        raise VerificationError(f"tensor {output.name!r} does not read back equal to the source")


def reads_back_as_copied(written: ByteRange, copied: int) -> bool:
    """One pass over the output: its bytes have the CRC-32 taken as the source was copied."""
    return crc32(written) & 0xFFFFFFFF == copied & 0xFFFFFFFF


def _same_pieces(pieces: list[ByteRange], written: ByteRange) -> bool:
    """`written` holds the pieces' bytes one after another."""
    if sum(p.size for p in pieces) != written.size:
        return False
    done = 0
    for piece in pieces:
        if not same_bytes(piece, ByteRange(written.path, written.offset + done, piece.size, written.record)):
            return False
        done += piece.size
    return True


def _write_pth(f: BinaryIO, root: str, shard: list[OutputTensor], progress: Progress) -> None:
    planned: list[tuple[int, PlannedTensor]] = []
    for index, output in enumerate(shard):
        for position, name in output.names:  # aliases view the same storage: the tie survives
            tensor = pth_tensor(name, output.dtype, output.source.shape, str(index), output.source.numel)
            planned.append((position, tensor))
    in_source_order = [tensor for _, tensor in sorted(planned, key=lambda p: p[0])]
    write_pth(f, root, in_source_order, _storage_records(shard, progress))


def _storage_records(shard: list[OutputTensor], progress: Progress) -> Iterator[StorageRecord]:
    """Each output's record as the writer asks for it: a tensor read or gathered into memory
    is held only while it is written."""
    for index, output in enumerate(shard):
        direct = output.direct()
        yield (
            StorageRecord(str(index), span=direct)
            if direct is not None
            else StorageRecord(str(index), data=output.expected())
        )
        progress.advance(output.nbytes)


def _verify_pth(path: str, shard: list[OutputTensor]) -> None:
    from ckpttool.ops.safety.trust import torch_accepts

    torch_accepts(path, {n: (o.dtype, o.source.shape) for o in shard for _, n in o.names})
    weights = read_torch_zip(path).root
    for output in shard:
        written = _whole(weights[output.name])
        _verify_bytes(path, output, written, _copied_crc(output, written))


def _copied_crc(output: OutputTensor, written: ByteRange) -> int | None:
    """The zip writer took the CRC-32 of the source bytes it copied: when the source records
    none for them, that CRC-32 (in the written record) is what the copy is checked against."""
    direct = output.direct()
    if direct is None or recorded_crc(direct) is not None or written.record is None:
        return None
    return written.record.crc


def _verify_sources(outputs: list[OutputTensor]) -> None:
    """Every source record holds its CRC-32. Reading the source back for verification has
    checked them already; this makes sure of it before anything lands, kernel copies
    included (a no-op for records already checked)."""
    for output in outputs:
        if isinstance(output.source, FileSource):
            verify_tensor(output.source.ref)


def _write_index(outs: OutputSet, dst: str, paths: list[str], shards: list[list[OutputTensor]]) -> None:
    weight_map = shard_of(paths, [[name for output in shard for _, name in output.names] for shard in shards])
    write_index(outs, dst + ".index.json", weight_map, sum(o.nbytes for shard in shards for o in shard))
