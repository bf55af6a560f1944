"""`ckpttool convert SRC DST`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import click

from ckpttool.cli.common import (
    CastDtype,
    emit,
    notices_on_stderr,
    output_options,
    path_argument,
    progress_bar,
    unstack_option,
    warn,
)
from ckpttool.ops.convert import TARGETS

if TYPE_CHECKING:
    from ckpttool.ops.convert import ConvertTarget, Ranks


def _pairs(values: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not of the form KEY=VALUE", param_hint=option)
        pairs.append((key, rest))
    return pairs


@click.command("convert")
@path_argument("src")
@path_argument("dst")
@click.option(
    "--to",
    "to",
    type=click.Choice(TARGETS),
    help="Output format; dcp writes a torch.distributed.checkpoint folder [default: safetensors for a"
    " .safetensors DST, else pth].",
)
@click.option("--root", metavar="PATH", help="Dotted path of the weights inside SRC.")
@click.option("--dtype", type=CastDtype(), help="Cast floating tensors (aliases: fp16, half, bf16, fp32, float).")
@click.option(
    "--shard-size", metavar="SIZE", help="Split into shards of at most SIZE (5GB, 500MB, 2GiB) with an index json."
)
@click.option(
    "--strip-prefix", "strip_prefixes", multiple=True, metavar="P", help="Remove prefix P from keys (repeatable)."
)
@click.option(
    "--rename",
    "renames",
    multiple=True,
    metavar="REGEX=REPL",
    help="Rename keys with a regular expression (repeatable, in order).",
)
@click.option("--metadata", "metadata", multiple=True, metavar="K=V", help="safetensors metadata entry (repeatable).")
@click.option("--dedupe", is_flag=True, help="Store tied tensors once; aliases go into the metadata.")
@click.option(
    "--keep-structure",
    is_flag=True,
    help="Rename keys inside SRC and keep every other entry (epoch, optimizer state ...); implies --to pth.",
)
@click.option(
    "--force", is_flag=True, help="Replace an existing DST (with --trust: also load a file scan calls dangerous)."
)
@click.option("--trust", is_flag=True, help="Load SRC with torch.load(weights_only=False): runs code from the file.")
@unstack_option()
@output_options(("table", "json"))
def convert_command(src: str, dst: str, to: ConvertTarget | None, root: str | None, dtype: str | None,
                    shard_size: str | None, strip_prefixes: tuple[str, ...], renames: tuple[str, ...],
                    metadata: tuple[str, ...], dedupe: bool, keep_structure: bool, force: bool, trust: bool,
                    unstack: bool, fmt: str) -> None:  # fmt: skip
    """Write the weights of SRC as safetensors or as a plain state_dict that
    torch.load(weights_only=True) reads.

    SRC may be any checkpoint ckpttool reads, a whole pickled model included
    (its class is not needed). The output is verified against SRC tensor by
    tensor before it is renamed into place; SRC is never modified.

    With --keep-structure, the keys of the weights are renamed (--strip-prefix,
    --rename) inside a copy of the whole file: a training checkpoint keeps its
    epoch, loss and optimizer state.
    """
    notices_on_stderr()
    if keep_structure:
        weights_only = {"--to safetensors": to == "safetensors", "--dtype": dtype, "--shard-size": shard_size,
                        "--metadata": metadata, "--dedupe": dedupe, "--trust": trust,
                        "--unstack": unstack}  # fmt: skip
        _keep_structure(src, dst, root, strip_prefixes, _pairs(renames, "--rename"), weights_only, force, fmt)
        return
    from ckpttool import render
    from ckpttool.ops.convert import ConvertOptions, convert, default_target, parse_size

    target = to or default_target(dst)
    options = ConvertOptions(
        to=target,
        root=root,
        dtype=dtype,
        shard_size=parse_size(shard_size) if shard_size else None,
        strip_prefixes=strip_prefixes,
        renames=tuple(_pairs(renames, "--rename")),
        metadata=dict(_pairs(metadata, "--metadata")),
        dedupe=dedupe,
        force=force,
        trust=trust,
        unstack=unstack,
        ranks=_ranks(src, target),
    )
    leader = options.ranks.leader  # under torchrun: one bar and one report, rank 0's
    bar = progress_bar("convert") if leader else None
    try:
        report = convert(src, dst, options, bar)
    finally:
        if bar is not None:
            bar.close()
    if leader:
        for note in report.notes:
            warn(note)
        emit(render.convert_output(report, fmt))


def _ranks(src: str, target: ConvertTarget) -> Ranks:
    """The ranks torchrun started, refusing first a conversion they cannot share."""
    from ckpttool.cli.torchrun import torchrun_ranks, torchrun_world
    from ckpttool.errors import UsageError
    from ckpttool.ops.convert.dcp.ranks import split_across_ranks

    if torchrun_world() > 1 and not split_across_ranks(src, target):
        raise UsageError("under torchrun only conversions into or out of a DCP folder are split; run this one alone")
    return torchrun_ranks()


def _keep_structure(
    src: str,
    dst: str,
    root: str | None,
    strip_prefixes: tuple[str, ...],
    renames: list[tuple[str, str]],
    weights_only: Mapping[str, object],
    force: bool,
    fmt: str,
) -> None:
    """The whole file with renamed keys; the options that shape a weights-only output are refused."""
    from ckpttool import render
    from ckpttool.errors import UsageError
    from ckpttool.ops.convert import destination_folder
    from ckpttool.ops.rewrite import rekey

    clashes = [option for option, given in weights_only.items() if given]
    if clashes:
        raise UsageError(f"--keep-structure only renames keys; it does not combine with {', '.join(clashes)}")
    if dst.endswith(".safetensors"):
        raise UsageError(f"{dst}: --keep-structure writes a torch checkpoint; name it .pth or .pt")
    bar = progress_bar("convert")
    try:
        with destination_folder(dst):
            report = rekey(src, dst, strip_prefixes, renames, root, force, bar)
    finally:
        bar.close()
    for note in report.notes:
        warn(note)
    emit(render.rekey_output(report, fmt))
