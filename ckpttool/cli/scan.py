"""`ckpttool scan PATH...`."""

from __future__ import annotations

import click

from ckpttool.cli.common import emit, finish, output_options, warn


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--strict", is_flag=True, help="Also fail (exit 1) on files that need an allowlist.")
@output_options()
def scan_command(paths: tuple[str, ...], strict: bool, fmt: str) -> None:
    """Security report for each file: every global its pickles name, how each
    is used (called, instantiated, referenced) and a verdict: safe,
    needs-allowlist (with the add_safe_globals line that makes
    torch.load(weights_only=True) accept it) or dangerous.

    Exit 1 if any file is dangerous (with --strict, also needs-allowlist);
    exit 2 if a file cannot be read at all.
    """
    from ckpttool import render
    from ckpttool.errors import EXIT_ERROR, CkptError
    from ckpttool.ops.scan import DANGEROUS, NEEDS_ALLOWLIST, scan_file

    results, unreadable = [], False
    for path in paths:
        try:
            results.append(scan_file(path))
        except CkptError as exc:
            warn(f"error: {exc}")
            unreadable = True
    renderers = {"json": render.scan_json, "csv": render.scan_csv, "table": render.scan_table}
    if results:
        emit(renderers[fmt](results))
    if unreadable:
        click.get_current_context().exit(EXIT_ERROR)
    failing = {DANGEROUS, NEEDS_ALLOWLIST} if strict else {DANGEROUS}
    finish(any(r.verdict in failing for r in results))
