"""`ckpttool optimizer PATH`."""

from __future__ import annotations

import click

from ckpttool.cli.common import emit, output_options, path_argument


@click.command("optimizer")
@path_argument()
@click.option(
    "--model",
    "model_spec",
    metavar="SPEC",
    help="package.module:Name or path/to/file.py:Name, to name parameters exactly.",
)
@click.option("--model-arg", "model_args", multiple=True, metavar="K=V", help="Argument for the model (repeatable).")
@output_options()
def optimizer_command(path: str, model_spec: str | None, model_args: tuple[str, ...], fmt: str) -> None:
    """The optimizer state in a checkpoint: each param group's hyper-parameters,
    each parameter's step and state tensors, and the optimizer type inferred
    from them (Adam, AdamW, SGD-momentum, RMSprop, ...).

    With --model, parameter indices are named exactly; without it, names are
    guessed from the file's own weights where that is unambiguous (and said so).
    """
    from ckpttool import render
    from ckpttool.ops.inspect import optimizer_files_beside, optimizers

    params = None
    if model_spec:
        from ckpttool.ops.compare import build_model, parameter_names, parse_model_args

        params = parameter_names(build_model(model_spec, parse_model_args(model_args)))
    found = optimizers(path, params)
    beside = optimizer_files_beside(path) if not found else []
    emit(render.optimizer_output(path, found, fmt, render.output_width(), beside))
