"""`ckpttool check PATH...`."""

from __future__ import annotations

import click

from ckpttool.cli.allow import allow_option, resolve_allow
from ckpttool.cli.common import FORMATS, emit, finish, output_options
from ckpttool.errors import EXIT_ERROR, UsageError


@click.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--model",
    "model_spec",
    metavar="SPEC",
    help="package.module:Name or path/to/file.py:Name (class or factory) to check keys, shapes, dtypes against.",
)
@click.option(
    "--model-arg",
    "model_args",
    multiple=True,
    metavar="K=V",
    help="Argument for the model (repeatable), e.g. num_classes=10.",
)
@click.option("--like", metavar="REF", help="A reference checkpoint: same keys, shapes and dtypes required.")
@click.option(
    "--allow-missing",
    "allow_missing",
    multiple=True,
    metavar="GLOB",
    help="Keys the model expects that the file may lack, e.g. 'head.*' for a warm start's new layer (repeatable).",
)
@click.option(
    "--allow-unexpected",
    "allow_unexpected",
    multiple=True,
    metavar="GLOB",
    help="Keys the file may hold that the model does not expect, e.g. 'fc.*' (repeatable).",
)
@click.option("--finite", is_flag=True, help="Fail on NaN or Inf in any weight (reads tensor data).")
@click.option("--cpu-only", is_flag=True, help="Fail when any storage restores to a device other than cpu.")
@click.option("--root", metavar="PATH", help="Dotted path of the weights inside the file.")
@click.option("--strict", is_flag=True, help="Warnings fail too (e.g. a file that needs an allowlist).")
@allow_option
@output_options((*FORMATS, "sarif"))
def check_command(paths: tuple[str, ...], model_spec: str | None, model_args: tuple[str, ...], like: str | None,
                  allow_missing: tuple[str, ...], allow_unexpected: tuple[str, ...], finite: bool, cpu_only: bool,
                  root: str | None, strict: bool, allow: tuple[str, ...], fmt: str) -> None:  # fmt: skip
    """The CI check: integrity (every record present and of the right size,
    CRC-32s, zip consistency) and safety (as scan) always; on request the keys,
    shapes and dtypes of a model (--model) or reference (--like), --finite and
    --cpu-only. When keys do not match, a "matched X of Y keys" line sums it up
    and suggestions give the convert command that fixes them (a prefix to strip
    or add, another root); --allow-missing / --allow-unexpected accept the keys a
    warm start leaves out on purpose.

    Every path is reported; one that cannot be read is an error finding of its
    own. Exit 1 if any error-level finding (with --strict, any warning too), 2
    when no path could be read at all.
    """
    from ckpttool import render
    from ckpttool.ops.compare import CheckOptions, check_paths, parse_model_args

    if (allow_missing or allow_unexpected) and not (model_spec or like):
        raise UsageError("--allow-missing and --allow-unexpected need --model or --like to compare keys with")
    options = CheckOptions(
        model_spec,
        parse_model_args(model_args),
        like,
        finite,
        cpu_only,
        root,
        strict,
        allow_missing=allow_missing,
        allow_unexpected=allow_unexpected,
        allow=resolve_allow(allow),
    )
    reports = check_paths(paths, options)
    emit(render.check_sarif(reports) if fmt == "sarif" else render.check_output(reports, strict, fmt))
    unreadable = [r for r in reports if not r.readable]
    if len(unreadable) == len(reports):
        first = unreadable[0]
        detail = f"{first.path}: {first.findings[0].message}"
        if len(reports) > 1:
            detail = f"none of the {len(reports)} paths could be read (first: {detail})"
        click.echo(f"ckpttool: error: {detail}", err=True)
        click.get_current_context().exit(EXIT_ERROR)
    finish(not all(r.ok(strict) for r in reports))
