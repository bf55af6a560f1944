"""`ckpttool scan PATH...`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ckpttool.cli.allow import allow_option, resolve_allow
from ckpttool.cli.common import FORMATS, emit, finish, output_options, warn

if TYPE_CHECKING:
    from ckpttool.ops.safety import UnreadableFile


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

    Every path is reported; one that cannot be read has the verdict
    unreadable. A folder is every file under it, each an entry (a DCP or
    sharded checkpoint one entry; links out of the folder not followed).
    Exit 1 if any file is dangerous, unknown-call or unreadable (with
    --strict, also needs-allowlist); exit 2 only when no path could be read
    at all.
    """
    from ckpttool import render
    from ckpttool.errors import EXIT_ERROR
    from ckpttool.ops.safety import DANGEROUS, NEEDS_ALLOWLIST, UNKNOWN_CALL, FileScan, UnreadableFile, scan_paths

    entries = scan_paths(paths, resolve_allow(allow))
    results = [e for e in entries if isinstance(e, FileScan)]
    unreadable = [e for e in entries if isinstance(e, UnreadableFile)]
    error = None if results else _none_read(unreadable)
    if fmt == "sarif":
        emit(render.scan_sarif(results, [(u.path, u.error) for u in unreadable]))
    elif fmt == "json":
        emit(render.scan_json(entries, error))
    else:
        emit(render.scan_csv(entries) if fmt == "csv" else render.scan_table(entries))
    if error is not None:
        path, message = error
        warn(f"error: {path}: {message}" if path else f"error: {message}")
        click.get_current_context().exit(EXIT_ERROR)
    for u in unreadable:  # reported above among the others; stderr names it too
        warn(f"error: {u.path}: {u.error}")
    failing = {DANGEROUS, UNKNOWN_CALL} | ({NEEDS_ALLOWLIST} if strict else set())
    finish(bool(unreadable) or any(r.verdict in failing for r in results))


def _none_read(unreadable: list[UnreadableFile]) -> tuple[str | None, str]:
    """The path and message of the one stderr line (and JSON error) when no path could be read."""
    first = unreadable[0]
    if len(unreadable) == 1:
        return first.path, first.error
    return None, f"none of the {len(unreadable)} paths could be read (first: {first.path}: {first.error})"
