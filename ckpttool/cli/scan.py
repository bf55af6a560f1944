"""`ckpttool scan PATH...`."""

from __future__ import annotations

import click

from ckpttool.cli.allow import allow_option, resolve_allow
from ckpttool.cli.common import FORMATS, emit, finish, output_options, warn


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--strict", is_flag=True, help="Also fail (exit 1) on files that need an allowlist.")
@allow_option
@output_options((*FORMATS, "sarif"))
def scan_command(paths: tuple[str, ...], strict: bool, allow: tuple[str, ...], fmt: str) -> None:
    """Security report for each file: every global its pickles name, how each
    is used (called, instantiated, referenced) and a verdict: safe (torch's
    weights_only allowlist only), needs-allowlist (classes given state, vetted
    calls; prints the add_safe_globals line), unknown-call (calls something
    neither vetted nor a known gadget: named, with its arguments) or dangerous
    (known gadgets, names computed at load time, parser differentials, scan
    errors). Also what torch.load(weights_only=True) does with the file.

    Exit 1 if any file is dangerous or unknown-call (with --strict, also
    needs-allowlist); exit 2 if a file cannot be read at all.
    """
    from ckpttool import render
    from ckpttool.errors import EXIT_ERROR, CkptError
    from ckpttool.ops.scan import DANGEROUS, NEEDS_ALLOWLIST, UNKNOWN_CALL, scan_file

    allowed = resolve_allow(allow)
    results, unreadable = [], []
    for path in paths:
        try:
            results.append(scan_file(path, allowed))
        except CkptError as exc:
            warn(f"error: {exc}")
            unreadable.append((path, exc.message))
    renderers = {"json": render.scan_json, "csv": render.scan_csv, "table": render.scan_table}
    if fmt == "sarif":
        emit(render.scan_sarif(results, unreadable))
    elif results:
        emit(renderers[fmt](results))
    if unreadable:
        click.get_current_context().exit(EXIT_ERROR)
    failing = {DANGEROUS, UNKNOWN_CALL} | ({NEEDS_ALLOWLIST} if strict else set())
    finish(any(r.verdict in failing for r in results))
