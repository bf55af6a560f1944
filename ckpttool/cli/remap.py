"""`ckpttool remap SRC DST --device cpu` / `--map FROM=TO`."""

from __future__ import annotations

import click

from ckpttool.cli.common import emit, notices_on_stderr, output_options, path_argument, progress_bar, warn


@click.command("remap")
@path_argument("src")
@path_argument("dst")
@click.option("--device", metavar="DEVICE", help="Restore every storage to DEVICE (e.g. cpu).")
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="FROM=TO",
    help="Restore storages on FROM to TO, e.g. cuda:1=cuda:0; FROM may be a type (cuda).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing DST, and rewrite a file scan fails (dangerous, unknown-call; with --trust: load it).",
)
@click.option("--trust", is_flag=True, help="Load SRC with torch.load(weights_only=False): runs code from the file.")
@output_options(("table", "json"))
def remap_command(
    src: str, dst: str, device: str | None, maps: tuple[str, ...], force: bool, trust: bool, fmt: str
) -> None:
    """Rewrite the device every storage is restored to (model, optimizer state,
    everything), so DST loads without map_location.

    Only the pickle is rewritten, without importing any class it names; tensor
    records are copied byte for byte. Legacy-format input gives zip-format
    output. DST is verified before it is renamed into place.
    """
    notices_on_stderr()
    from ckpttool import render
    from ckpttool.ops.rewrite import parse_mapping, remap

    bar = progress_bar("remap")
    try:
        report = remap(src, dst, parse_mapping(device, maps), force=force, trust=trust, progress=bar)
    finally:
        bar.close()
    for note in report.notes:
        warn(note)
    emit(render.remap_output(report, fmt))
