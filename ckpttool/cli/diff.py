"""`ckpttool diff A B`."""

from __future__ import annotations

import click

from ckpttool.cli.common import emit, finish, output_options, path_argument, progress_bar, unstack_option


@click.command("diff")
@path_argument("a")
@path_argument("b")
@click.option("--atol", type=float, default=0.0, show_default=True, help="Absolute tolerance (as torch.allclose).")
@click.option("--rtol", type=float, default=0.0, show_default=True, help="Relative tolerance (as torch.allclose).")
@click.option("--equal-nan", is_flag=True, help="Count NaN as equal to NaN.")
@click.option(
    "--ignore-dtype",
    is_flag=True,
    help="Compare values across dtypes (both widened to float64, complex128 or int64); "
    "a dtype difference alone is not a difference.",
)
@click.option(
    "--keys-only",
    is_flag=True,
    help="Compare keys, shapes and dtypes only; read no tensor data (values are not compared).",
)
@click.option(
    "--all",
    "every_tensor",
    is_flag=True,
    help="Compare every tensor in the files (optimizer state too), not only the weights, and every "
    "non-tensor value outside the weights (optimizer hyper-parameters, nested configs).",
)
@click.option("--root-a", metavar="PATH", help="Dotted path of the weights inside A.")
@click.option("--root-b", metavar="PATH", help="Dotted path of the weights inside B.")
@unstack_option()
@output_options()
def diff_command(a: str, b: str, atol: float, rtol: float, equal_nan: bool, ignore_dtype: bool, keys_only: bool,
                 every_tensor: bool, root_a: str | None, root_b: str | None, unstack: bool,
                 fmt: str) -> None:  # fmt: skip
    """Compare two checkpoints of any formats (a .pth against its
    .safetensors, a whole pickled model against a state_dict, a sharded folder
    against a single file): keys only in A or B, shape and dtype mismatches,
    value mismatches (how many elements differ, max absolute and relative
    error, relative L2 error), and differing non-tensor entries.

    Exact by default (as torch.equal); exit 0 when nothing differs, 1 when
    something does.
    """
    from ckpttool import render
    from ckpttool.errors import UsageError
    from ckpttool.ops.compare import DiffOptions, Tolerance, diff

    if atol < 0 or rtol < 0:
        raise UsageError("--atol and --rtol must not be negative")
    options = DiffOptions(
        Tolerance(atol, rtol, equal_nan), keys_only, every_tensor, root_a, root_b, ignore_dtype, unstack
    )
    bar = progress_bar("diff")
    try:
        report = diff(a, b, options, bar)
    finally:
        bar.close()
    emit(render.diff_output(report, fmt, render.output_width()))
    finish(report.differs)
