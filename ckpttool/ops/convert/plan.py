"""What a conversion writes, decided before anything is written: the options, each output
tensor (its source, name, dtype and tied names), the shards and their file names, and the
refusals (no tensors, a layout or dtype the target cannot hold)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ckpttool.checkpoint import byte_size
from ckpttool.dtypes import DTYPES
from ckpttool.errors import FormatError, UsageError, WeightsNotFoundError
from ckpttool.formats import read_checkpoint
from ckpttool.formats.dcp_megatron import is_under, refuse_unconvertible
from ckpttool.ops.convert.dcp.ranks import Ranks
from ckpttool.ops.convert.sources import Source, TrustedSource, file_sources
from ckpttool.ops.convert.targets import SAFETENSORS, ConvertTarget
from ckpttool.ops.convert.unstack import unstack_checkpoint
from ckpttool.ops.convert.writers import refuse_unstorable
from ckpttool.tensordata import ByteRange, cast, tensor_bytes


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


def shard_outputs(outputs: list[OutputTensor], limit: int | None) -> list[list[OutputTensor]]:
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
