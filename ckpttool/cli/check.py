"""`ckpttool check PATH...`."""

from __future__ import annotations

import click

from ckpttool.cli.common import emit, finish, output_options


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
@click.option("--finite", is_flag=True, help="Fail on NaN or Inf in any weight (reads tensor data).")
@click.option("--cpu-only", is_flag=True, help="Fail when any storage restores to a device other than cpu.")
@click.option("--root", metavar="PATH", help="Dotted path of the weights inside the file.")
@click.option("--strict", is_flag=True, help="Warnings fail too (e.g. a file that needs an allowlist).")
@output_options()
def check_command(paths: tuple[str, ...], model_spec: str | None, model_args: tuple[str, ...], like: str | None,
                  finite: bool, cpu_only: bool, root: str | None, strict: bool, fmt: str) -> None:  # fmt: skip
    """The CI check: integrity (every record present and of the right size,
    CRC-32s, zip consistency) and safety (as scan) always; on request the keys,
    shapes and dtypes of a model (--model) or reference (--like), --finite and
    --cpu-only. When keys do not match, suggestions say which fix (a prefix to
    strip or add, another root) makes them match.

    Exit 1 if any error-level finding (with --strict, any warning too).
    """
    from ckpttool import render
    from ckpttool.ops.check import CheckOptions, check
    from ckpttool.ops.modelspec import parse_model_args

    options = CheckOptions(model_spec, parse_model_args(model_args), like, finite, cpu_only, root, strict)
    reports = [check(path, options) for path in paths]
    emit(render.check_output(reports, strict, fmt))
    finish(not all(r.ok(strict) for r in reports))
