"""Tensors made of slices of the flat partitions a ZeRO checkpoint saves, one per rank.

A tensor held whole by one partition is a view of that partition's record (copied as it
is); one spread over ranks is a tensor whose record gathers its slices on demand, each
read straight into one buffer once its own record has passed its CRC-32 check, so memory
is bounded by the tensor. Its record also names the slices as byte ranges (`parts`), which
`convert` copies file to file and compares range by range, never holding the tensor.
"""

from __future__ import annotations

import os
from functools import partial
from math import prod
from typing import TypeGuard

from ckpttool.checkpoint import Record, Storage, TensorRef, contiguous_strides
from ckpttool.errors import FormatError
from ckpttool.formats.deepspeed_files import ZeroFiles
from ckpttool.formats.deepspeed_layout import Place
from ckpttool.tensordata import CHUNK, ByteRange, direct_range, read_span, verify_record


def is_flat(value: object) -> TypeGuard[TensorRef]:
    if not isinstance(value, TensorRef):
        return False
    return len(value.shape) == 1 and value.layout == "strided" and value.is_contiguous()


def slice_of(part: TensorRef, start: int, count: int) -> TensorRef:
    return TensorRef(part.dtype, (count,), (1,), part.offset + start, part.storage)


def assemble(
    name: str, shape: tuple[int, ...], pieces: list[TensorRef], files: ZeroFiles, kind: str = "tensor"
) -> TensorRef:
    """The tensor `name`: one piece's view as it is, or a record that gathers the pieces."""
    dtypes = {p.dtype for p in pieces}
    if len(dtypes) > 1:
        raise FormatError(f"{name!r} is stored in pieces of dtypes {sorted(dtypes)}", path=files.folder)
    if any(p.storage is None or p.storage.byteorder != "little" for p in pieces):
        raise FormatError(f"{name!r} has a piece without little-endian data in the file", path=files.folder)
    dtype = pieces[0].dtype if pieces else "float32"
    strides = contiguous_strides(shape)
    if len(pieces) == 1:
        piece = pieces[0]
        return TensorRef(dtype, shape, strides, piece.offset, piece.storage, kind=kind)
    storage = Storage(f"{name} (gathered)", dtype, prod(shape), "cpu")
    first = pieces[0].storage.record.path if pieces and pieces[0].storage and pieces[0].storage.record else files.folder
    storage.record = Record(first, f"{name} ({len(pieces)} slices)", 0, storage.nbytes)
    storage.record.gather = partial(gather, pieces, storage.record)
    storage.record.parts = partial(parts, pieces)
    storage.record.viewed_by = partial(_named, name)
    return TensorRef(dtype, shape, strides, 0, storage, kind=kind)


def gather(pieces: list[TensorRef], record: Record) -> bytearray:
    """The pieces' bytes one after another, read straight into one buffer once each piece's
    record has passed its CRC-32 check (a streamed pass, once per record); `record`, the
    gathered tensor's, is then known good, so checking it again reads nothing."""
    out = bytearray(sum(p.nbytes for p in pieces))
    view, done = memoryview(out), 0
    for piece in pieces:
        source = direct_range(piece)
        if source is None or source.record is None:  # not one plain byte range: read as torch would
            data, _ = read_span(piece)
            view[done : done + len(data)] = data
            done += len(data)
            continue
        verify_record(source.record)
        _read_into(view[done : done + source.size], source.path, source.offset)
        done += source.size
    record.verified = True
    return out


def parts(pieces: list[TensorRef]) -> list[ByteRange] | None:
    """Each piece as the plain byte range of its file it is (copied file to file), or None."""
    ranges = [direct_range(piece) for piece in pieces]
    return None if None in ranges else [r for r in ranges if r is not None]


def _read_into(view: memoryview, path: str, offset: int) -> None:
    with open(path, "rb") as f:
        got = 0
        while got < len(view):
            n = os.preadv(f.fileno(), [view[got : got + CHUNK]], offset + got)
            if n == 0:
                raise FormatError(f"file ends inside a storage record (byte {offset + got})", path=path)
            got += n


def _named(name: str) -> list[str]:
    return [name]


def bind(
    name: str,
    places: list[Place],
    tensors: list[list[TensorRef]],
    shape: tuple[int, ...],
    files: ZeroFiles,
    kind: str = "tensor",
) -> TensorRef:
    pieces = []
    for place in places:
        part = tensors[place.rank][place.group]
        if place.start + place.count > part.numel:
            raise FormatError(
                f"{name!r}: rank {place.rank} holds {part.numel} elements in flat group {place.group}, "
                f"short of {place.start + place.count}",
                path=files.optim[place.rank],
            )
        pieces.append(slice_of(part, place.start, place.count))
    return assemble(name, shape, pieces, files, kind)
