"""`ckpttool inspect PATH`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ckpttool.cli.common import emit, output_options, path_argument, progress_bar, unstack_option, warn

if TYPE_CHECKING:
    from ckpttool.checkpoint import Checkpoint


@click.command("inspect")
@path_argument()
@click.option("--filter", "patterns", multiple=True, metavar="GLOB", help="Only keys matching GLOB (repeatable).")
@click.option("--all", "show_all", is_flag=True, help="Every tensor in the file, optimizer state included.")
@click.option("--tree", is_flag=True, help="An indented module tree with parameter and buffer counts and a total.")
@click.option(
    "--depth", type=click.IntRange(min=1), metavar="N", help="With --tree: only the first N levels of modules."
)
@click.option("--full-prefix", is_flag=True, help="With --tree: each module's full dotted prefix (layer1.0.conv1).")
@click.option("--sort", type=click.Choice(["key", "size"]), help="Sort rows by key or by size (largest first).")
@click.option("--root", metavar="PATH", help="Dotted path of the weights inside the file.")
@click.option(
    "--stats", is_flag=True, help="Min, max, mean, std, NaN/Inf counts and share of zeros (reads tensor data)."
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Also the file's serialization records (version, id, ...) and, for a DCP folder, every saved chunk.",
)
@unstack_option()
@output_options()
def inspect_command(
    path: str,
    patterns: tuple[str, ...],
    show_all: bool,
    tree: bool,
    depth: int | None,
    full_prefix: bool,
    sort: str | None,
    root: str | None,
    stats: bool,
    verbose: bool,
    unstack: bool,
    fmt: str,
) -> None:
    """What is in a checkpoint: where the weights are, how many parameters and
    buffers, every tensor's dtype, shape, size and device, the non-tensor
    entries (epoch, loss, hyper-parameters) and the classes of pickled objects.

    Reads only the pickle or header: no tensor data, nothing executed
    (--stats reads the tensors, one at a time). Tables fit the terminal
    ($COLUMNS); JSON and CSV are never cut.
    """
    from ckpttool import render
    from ckpttool.errors import UsageError
    from ckpttool.formats import open_path
    from ckpttool.ops.inspect.report import count, describe, select, top_level_summary

    # Options that only shape the tree are an error without it, never silently ignored.
    if not tree and (depth is not None or full_prefix):
        raise UsageError(f"{'--depth' if depth is not None else '--full-prefix'} only applies with --tree")
    from ckpttool.ops.inspect.report import tree as group_by_module

    opened = open_path(path)
    checkpoint = opened.checkpoint()
    if unstack:
        from ckpttool.ops.convert.unstack import unstack_checkpoint

        unstack_checkpoint(checkpoint)
    report = describe(checkpoint, root, opened)
    weights = select(report.weights, patterns, sort)
    tensors = select(report.tensors, patterns, sort)
    shown = tensors if show_all else weights
    if patterns and not shown:
        warn(f"--filter {' '.join(patterns)} matches no {'tensor' if show_all else 'weight'} key in {path}")
    width = render.output_width()
    if stats:
        emit(_stats(checkpoint, report.weights_root if not show_all else None, root, patterns, sort, fmt, width))
    elif tree:
        rows = group_by_module(shown, depth)
        emit(render.tree_output(report, rows, count(shown), fmt, width, full_prefix))
    elif fmt == "json":
        emit(render.inspect_json(report, weights, tensors))
    elif fmt == "csv":
        emit(render.tensor_rows_csv(shown))
    else:
        held = top_level_summary(checkpoint.root, report.weights_root)
        emit(render.inspect_summary(report, held, shown, width, verbose, filtered=bool(patterns)))
        if shown:
            emit("\n" + render.tensor_rows_table(shown, width))
        if verbose and any(r.chunks for r in shown):
            emit("\n" + render.chunk_rows_table(shown, width))


def _stats(
    checkpoint: Checkpoint,
    weights_root: str | None,
    root: str | None,
    patterns: tuple[str, ...],
    sort: str | None,
    fmt: str,
    width: int | None,
) -> str:
    from ckpttool import render
    from ckpttool.errors import about
    from ckpttool.ops.inspect.report import select
    from ckpttool.ops.inspect.stats import all_stats
    from ckpttool.weights import all_tensors, find_weights

    named = find_weights(checkpoint.root, root).tensors if weights_root is not None else all_tensors(checkpoint.root)
    chosen = select(named, patterns, sort)
    bar = progress_bar("stats")
    bar.start(sum(t.nbytes for t in chosen))
    try:
        with about(checkpoint.path):
            stats = all_stats(chosen, bar)
        return render.stats_output(checkpoint.path, stats, fmt, width)
    finally:
        bar.close()
