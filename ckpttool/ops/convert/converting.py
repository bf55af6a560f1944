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
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ckpttool.atomic import OutputSet, created_folders, output_set
from ckpttool.checkpoint import TensorRef, byte_size
from ckpttool.dtypes import DTYPES
from ckpttool.errors import (
    FormatError,
    IntegrityError,
    UsageError,
    VerificationError,
    WeightsNotFoundError,
    about,
)
from ckpttool.formats import read_checkpoint
from ckpttool.formats.dcp_megatron import is_under, refuse_unconvertible
from ckpttool.formats.safetensors import header_bytes, read_safetensors
from ckpttool.formats.torchzip import read_torch_zip
from ckpttool.formats.torchzip_write import (
    PlannedTensor,
    StorageRecord,
    root_folder,
)
from ckpttool.ops.convert.dcp.ranks import Ranks
from ckpttool.ops.convert.sources import FileSource, Source, TrustedSource, file_sources
from ckpttool.ops.convert.targets import PTH, SAFETENSORS, ConvertTarget
from ckpttool.ops.convert.unstack import unstack_checkpoint
from ckpttool.ops.convert.writers import (
    check_safetensors_header,
    pth_tensor,
    refuse_unstorable,
    safetensors_metadata,
    shard_of,
    write_index,
    write_pth,
)
from ckpttool.progress import NoProgress, Progress
from ckpttool.tensordata import (
    ByteRange,
    cast,
    copy_matches_record,
    copy_range,
    range_equals,
    same_bytes,
    tensor_bytes,
    verify_tensor,
)


@dataclass
class ConvertOptions:
    to: ConvertTarget = SAFETENSORS
    root: str | None = None
    dtype: str | None = None
    shard_size: int | None = None
    strip_prefixes: tuple[str, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    dedupe: bool = False
    force: bool = False
    trust: bool = False
    unstack: bool = False  # Megatron-Core's stacked layers, one tensor per layer (convert/unstack.py)
    # The processes sharing a DCP conversion; one by default. The command passes torchrun's ranks in.
    ranks: Ranks = field(default_factory=Ranks)


@dataclass
class OutputTensor:
    name: str
    source: Source
    dtype: str
    position: int  # in the source's key order; aliases keep theirs too
    aliases: list[tuple[int, str]] = field(default_factory=list)

    @property
    def names(self) -> list[tuple[int, str]]:
        return [(self.position, self.name), *self.aliases]

    @property
    def nbytes(self) -> int:
        return byte_size(self.source.numel, self.dtype)

    def direct(self) -> ByteRange | None:
        """The source bytes, when the output holds exactly them."""
        return self.source.byte_range() if self.dtype == self.source.dtype else None

    def pieces(self) -> list[ByteRange] | None:
        """The source bytes as ranges of files, one after another, when the output holds exactly them."""
        return self.source.byte_ranges() if self.dtype == self.source.dtype else None

    def expected(self) -> memoryview:
        """The bytes the output must hold: the source's, or exactly the cast of them."""
        return tensor_bytes(cast(self.source.tensor(), self.dtype))


@dataclass
class ConvertReport:
    source: str
    outputs: list[str]
    format: str
    weights_root: str | None
    tensors: int
    bytes: int
    aliases: dict[str, str] = field(default_factory=dict)
    cast: int = 0
    notes: list[str] = field(default_factory=list)


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
    shards = _shard(outputs, options.shard_size)
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


# -- what to write -------------------------------------------------------------------------------


def weight_sources(src: str, options: ConvertOptions) -> tuple[list[tuple[str, Source]], str | None, list[str]]:
    if options.trust:
        from ckpttool.ops.safety.trust import trusted_weights

        if options.unstack:
            raise UsageError("--unstack reads SRC itself; it does not combine with --trust")
        tensors, where = trusted_weights(src, options.root, options.force)
        return [(k, TrustedSource(v)) for k, v in tensors.items()], where, []
    checkpoint = read_checkpoint(src)
    if options.unstack:
        unstack_checkpoint(checkpoint)
    sources, weights_root, notes = file_sources(checkpoint, options.root)
    refuse_unconvertible(checkpoint, [fqn for fqn in checkpoint.unconvertible if is_under(fqn, weights_root)])
    return sources, weights_root, notes


def plan_outputs(sources: list[tuple[str, Source]], options: ConvertOptions, notes: list[str]) -> list[OutputTensor]:
    if not sources:
        raise WeightsNotFoundError("no tensors to convert")
    names = rename([name for name, _ in sources], options.strip_prefixes, options.renames, notes)
    outputs: list[OutputTensor] = []
    kept: dict[Any, OutputTensor] = {}
    for position, (name, (_, source)) in enumerate(zip(names, sources, strict=True)):
        dtype = options.dtype if options.dtype and DTYPES[source.dtype].is_floating else source.dtype
        _check_convertible(name, source, dtype, options.to)
        identity = source.identity() if options.dedupe else None
        if identity is not None and identity in kept:
            kept[identity].aliases.append((position, name))
            continue
        output = OutputTensor(name, source, dtype, position)
        outputs.append(output)
        if identity is not None:
            kept[identity] = output
    return outputs


def rename(
    names: Sequence[str], prefixes: Sequence[str], renames: Sequence[tuple[str, str]], notes: list[str]
) -> list[str]:
    """Strip prefixes, then apply each REGEX=REPL in order; refuse names that collide."""
    out = list(names)
    for prefix in prefixes:
        hits = sum(n.startswith(prefix) for n in out)
        if not hits:
            notes.append(f"no key starts with {prefix!r}")
        out = [n[len(prefix) :] if n.startswith(prefix) else n for n in out]
    for pattern, replacement in renames:
        try:
            regex = re.compile(pattern)
            out = [regex.sub(replacement, n) for n in out]
        except re.error as exc:
            raise UsageError(f"--rename {pattern!r}: {exc}") from None
    seen: dict[str, str] = {}
    for before, after in zip(names, out, strict=True):
        if not after:
            raise UsageError(f"renaming {before!r} leaves an empty name")
        if after in seen:
            raise UsageError(f"{seen[after]!r} and {before!r} would both be named {after!r}")
        seen[after] = before
    return out


def _check_convertible(name: str, source: Source, dtype: str, to: ConvertTarget) -> None:
    if source.layout != "strided":
        raise FormatError(f"tensor {name!r} is {source.layout}; only dense tensors can be converted")
    if not source.has_data:
        raise FormatError(f"tensor {name!r} has no data in the file (saved on {source.device})")
    if DTYPES[source.dtype].kind == "quantized":
        raise FormatError(
            f"tensor {name!r} is quantized ({source.dtype}); its scale and zero point cannot be converted"
        )
    refuse_unstorable(name, dtype, to)


def _shard(outputs: list[OutputTensor], limit: int | None) -> list[list[OutputTensor]]:
    if not limit:
        return [outputs]
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for output in outputs:
        if shards[-1] and size + output.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(output)
        size += output.nbytes
    return shards


def shard_paths(dst: str, count: int) -> list[str]:
    if count == 1:
        return [dst]
    folder, name = os.path.split(dst)
    stem, dot, suffix = name.partition(".")
    return [os.path.join(folder, f"{stem}-{i:05d}-of-{count:05d}{dot}{suffix}") for i in range(1, count + 1)]


# -- writing and verifying -------------------------------------------------------------------------


def _write_and_verify(
    outs: OutputSet, path: str, shard: list[OutputTensor], options: ConvertOptions, progress: Progress
) -> None:
    output = outs.open(path)
    if options.to == SAFETENSORS:
        _write_safetensors(output.handle, shard, options.metadata, progress)
    else:
        _write_pth(output.handle, root_folder(path), shard, progress)
    output.seal()
    with about(output.final):  # the temporary file is gone by the time anyone reads this
        if options.to == SAFETENSORS:
            _verify_safetensors(output.temp, shard, _metadata(shard, options.metadata))
        else:
            _verify_pth(output.temp, shard)


def _metadata(shard: list[OutputTensor], user: dict[str, str]) -> dict[str, str]:
    return safetensors_metadata(user, {alias: o.name for o in shard for _, alias in o.aliases})


def _write_safetensors(
    f: BinaryIO, shard: list[OutputTensor], user_metadata: dict[str, str], progress: Progress
) -> None:
    entries = [(o.name, o.dtype, o.source.shape, o.nbytes) for o in shard]
    f.write(header_bytes(entries, _metadata(shard, user_metadata)))
    for output in shard:
        _write_data(f, output)
        progress.advance(output.nbytes)


def _write_data(f: BinaryIO, output: OutputTensor) -> None:
    pieces = output.pieces()
    if pieces is not None:
        for piece in pieces:
            copy_range(piece, f)
    else:
        f.write(output.expected())


def _verify_safetensors(path: str, shard: list[OutputTensor], metadata: dict[str, str]) -> None:
    # The reference implementation parses and validates the header we wrote...
    check_safetensors_header(path, [(o.name, o.dtype, o.source.shape) for o in shard], metadata)
    # ...and every tensor's bytes must be the source's (or the cast of them).
    tensors = read_safetensors(path).root
    for output in shard:
        _verify_bytes(path, output, _whole(tensors[output.name]))


def _whole(tensor: TensorRef) -> ByteRange:
    from ckpttool.tensordata import direct_range

    span = direct_range(tensor)
    assert span is not None  # files we wrote are contiguous and little-endian
    return span


def _verify_bytes(path: str, output: OutputTensor, written: ByteRange) -> None:
    pieces = output.pieces()
    if pieces is not None and len(pieces) == 1 and copy_matches_record(pieces[0], written):
        return  # the copy's CRC-32 is the source record's: neither needs reading again
    try:
        equal = _same_pieces(pieces, written) if pieces is not None else range_equals(written, output.expected())
    except IntegrityError as exc:
        if exc.path != path:
            raise  # a source record fails its CRC-32: refused as damaged input
        equal = False  # what we wrote fails the CRC-32 we gave it
    if not equal:
        raise VerificationError(f"tensor {output.name!r} does not read back equal to the source")


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
        _verify_bytes(path, output, _whole(weights[output.name]))


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


def parse_size(text: str) -> int:
    """`5GB` (decimal, as Hugging Face counts), `512MiB` (binary) or a number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", text, re.IGNORECASE)
    if not match:
        raise UsageError(f"size {text!r}: expected e.g. 5GB, 500MB, 2GiB or a byte count")
    number, unit = float(match.group(1)), match.group(2).upper().rstrip("B")
    powers = {
        "": 1,
        "K": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
        "KI": 2**10,
        "MI": 2**20,
        "GI": 2**30,
        "TI": 2**40,
    }
    size = int(number * powers[unit])
    if size <= 0:
        raise UsageError(f"size {text!r} must be positive")
    return size
