"""What every command shares: output options, --debug, printing and exit codes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ckpttool.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK

if TYPE_CHECKING:
    from ckpttool.progress import Bar

F = TypeVar("F", bound=Callable[..., object])
DEBUG_KEY = "ckpttool.debug"
FORMAT_KEY = "ckpttool.format"  # so that errors can answer in the format asked for
FORMATS = ("table", "json", "csv")


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[DEBUG_KEY] = True


def _set_format(ctx: click.Context, _param: click.Parameter, value: str) -> str:
    ctx.meta[FORMAT_KEY] = value
    return value


debug_option = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Show a traceback when something fails.",
)


def output_options(formats: tuple[str, ...] = FORMATS) -> Callable[[F], F]:
    """`--format` (table for people, json/csv for machines) and `--debug`."""

    def decorate(func: F) -> F:
        func = click.option(
            "--format",
            "fmt",
            type=click.Choice(formats),
            default="table",
            show_default=True,
            is_eager=True,  # known before other options fail, for a JSON error object
            callback=_set_format,
            help="Output format; json carries schema_version (errors too).",
        )(func)
        return debug_option(func)

    return decorate


def unstack_option() -> Callable[[F], F]:
    return click.option(
        "--unstack",
        is_flag=True,
        help="Megatron-Core's stacked layers (decoder.layers.mlp... of shape [L, ...]) as one tensor per layer, "
        "decoder.layers.{i}.mlp....",
    )


_EMIT_PIECE = 1 << 20


def emit(text: str) -> None:
    if len(text) <= _EMIT_PIECE:
        if text:
            click.echo(text)
        return
    # A 10^5-row JSON document in pieces: never a second and third copy of it (with its
    # newline, encoded) in memory at once.
    for start in range(0, len(text), _EMIT_PIECE):
        click.echo(text[start : start + _EMIT_PIECE], nl=False)
    click.echo("")


def warn(message: str) -> None:
    click.echo(f"ckpttool: {message}", err=True)


def finish(findings: bool) -> None:
    """Exit 1 when the command found something, 0 when all is clean."""
    click.get_current_context().exit(EXIT_FINDINGS if findings else EXIT_OK)


BAR_MIN_BYTES = 256 << 20  # a bar only for work worth watching


def progress_bar(description: str) -> Bar:
    """A bar of bytes on stderr, shown only on a terminal and only for work worth watching."""
    from ckpttool.progress import Bar

    return Bar(description, sys.stderr if sys.stderr.isatty() else None, min_total=BAR_MIN_BYTES)


class CastDtype(click.ParamType[str]):
    """A floating dtype to cast to, by torch's name or a common alias (fp16, bf16, half, float)."""

    name = "dtype"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "[float16|bfloat16|float32]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from ckpttool.dtypes import CAST_ALIASES, cast_target

        target = cast_target(str(value))
        if target is None:
            known = ", ".join(sorted(CAST_ALIASES))
            self.fail(f"{value!r} is not a dtype to cast to; use float16, bfloat16 or float32 (or {known})", param, ctx)
        return target


def path_argument(name: str = "path", **kwargs: Any) -> Callable[[F], F]:
    # No exists=True: ckpttool's own error names the file in its one-line message.
    return click.argument(name, type=click.Path(path_type=str), **kwargs)


__all__ = ["EXIT_ERROR", "debug_option", "emit", "finish", "output_options", "path_argument", "warn"]


_NOTICES = "ckpttool-command-line"


def notices_on_stderr() -> None:
    """What the library says on its `ckpttool` logger (a killed run's leftovers removed)
    is one stderr line each, whatever the logging set-up around the command. Called by the
    commands that write outputs, so the others never import logging."""
    import logging

    class StderrLines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            with contextlib.suppress(OSError, ValueError):  # stderr closed: nothing to say it on
                click.echo(record.getMessage(), err=True)

    logger = logging.getLogger("ckpttool")
    if not any(h.name == _NOTICES for h in logger.handlers):  # once per process (tests run many)
        handler = StderrLines(logging.WARNING)
        handler.set_name(_NOTICES)
        logger.addHandler(handler)
    logger.propagate = False
