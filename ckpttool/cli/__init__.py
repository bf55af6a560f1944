"""The `ckpttool` command line: a thin click layer over the library.

Commands are imported only when used, so `ckpttool --help` and the metadata
commands start without importing torch. Every `CkptError` becomes exit code 2 and
one line on stderr here, in one place; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import sys
from typing import Any, NoReturn

import click

from ckpttool import __version__
from ckpttool.cli.common import DEBUG_KEY, FORMAT_KEY, debug_option
from ckpttool.errors import EXIT_ERROR, CkptError
from ckpttool.signals import Interrupted, stopping_cleanly

# A command is one short process that keeps nearly everything it makes (the modules it
# imports, then the checkpoint's model) until it exits. At the collector's default pace, a
# collection every 700 new objects, a metadata command spends ~5% of its time finding no
# garbage; every 10,000 still bounds what a cycle left behind can hold.
gc.set_threshold(10_000, 10, 10)

# What a command built dies with the process. Python's last collection at shutdown would
# walk it all first (0.2 s after reading a 50,000-tensor file) to free what the exit frees
# anyway: frozen, it is left to the exit. Registered first, it runs after every other handler.
atexit.register(gc.freeze)

# name -> (module:attribute, one-line help shown by `ckpttool --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("ckpttool.cli.inspect:inspect_command", "What is in a checkpoint: summary, weights, tensors."),
    "scan": ("ckpttool.cli.scan:scan_command", "Security report: the globals each pickle names, and a verdict."),
    "check": (
        "ckpttool.cli.check:check_command",
        "CI checks: integrity, safety, keys against a model, finite, cpu-only.",
    ),
    "convert": (
        "ckpttool.cli.convert:convert_command",
        "Write the weights as safetensors or a plain state_dict, verified.",
    ),
    "remap": ("ckpttool.cli.remap:remap_command", "Rewrite the device storages are restored to (e.g. cuda:0 -> cpu)."),
    "diff": ("ckpttool.cli.diff:diff_command", "Compare two checkpoints of any formats, tensor by tensor."),
    "optimizer": (
        "ckpttool.cli.optimizer:optimizer_command",
        "The optimizer state: param groups, per-parameter state, type.",
    ),
    "reference": (
        "ckpttool.reference.cli:reference",
        "Train and evaluate the tutorial models; produce and check fixtures.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        if name not in COMMANDS:
            return None
        module, _, attribute = COMMANDS[name][0].partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx) if name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Usage errors as one stderr line too, not click's usage block. Under torchrun every
        rank leaves its process group the same way, on success or failure."""
        if kwargs.get("standalone_mode", True) is False:
            return super().main(*args, **kwargs)
        from ckpttool.cli.torchrun import joined, leave

        try:
            return self._main(*args, **kwargs)
        except SystemExit as exc:
            leave(exc.code if isinstance(exc.code, int) else 1 if exc.code else 0)  # as Python exits
            raise
        except Exception:
            if joined():  # a bug: its traceback, as Python would print it, then the same end
                _print_traceback()
                leave(1)
            raise

    def _main(self, *args: Any, **kwargs: Any) -> NoReturn:
        try:
            with stopping_cleanly():  # SIGTERM/SIGHUP/SIGINT unwind through every cleanup
                result = super().main(*args, **{**kwargs, "standalone_mode": False})
            sys.exit(result if isinstance(result, int) else 0)  # click returns ctx.exit codes here
        except Interrupted as exc:
            with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
                click.echo(f"ckpttool: stopped by {exc.name}; temporary outputs removed", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `ckpttool`: the help is the answer
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            sys.exit(0)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            _report(exc.ctx, None, f"{exc.format_message()}{hint}", EXIT_ERROR)
            sys.exit(EXIT_ERROR)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("ckpttool: aborted", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            sys.exit(130)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CkptError as exc:
            if ctx.meta.get(DEBUG_KEY):
                _print_traceback()
            _report(ctx, exc.path, exc.message, exc.exit_code)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            sys.stderr.close()  # the reader went away (`| head`): nothing left to say
            ctx.exit(0)
        except MemoryError:
            _report(ctx, None, "out of memory", EXIT_ERROR)
            ctx.exit(EXIT_ERROR)
        except OSError as exc:  # a full disk, a file size limit, a vanished folder
            _report(ctx, str(exc.filename) if exc.filename else None, str(exc.strerror or exc), EXIT_ERROR)
            ctx.exit(EXIT_ERROR)
        except Exception as exc:  # a bug: still one line, and a way to see more
            if ctx.meta.get(DEBUG_KEY):
                _print_traceback()
            message = f"{type(exc).__name__}: {exc} (rerun with --debug for a traceback)"
            _report(ctx, None, message, EXIT_ERROR, "internal error")
            ctx.exit(EXIT_ERROR)


def _report(ctx: click.Context | None, path: str | None, message: str, exit_code: int, kind: str = "error") -> None:
    """One stderr line; under `--format json` also a JSON error object on stdout, so a
    pipeline that parses stdout learns what went wrong instead of reading nothing."""
    click.echo(f"ckpttool: {kind}: {path}: {message}" if path else f"ckpttool: {kind}: {message}", err=True)
    if ctx is not None and ctx.meta.get(FORMAT_KEY) == "json":
        from ckpttool.render import to_json

        click.echo(to_json({"error": {"path": path, "message": message, "exit_code": exit_code}}))


def _print_traceback() -> None:
    import traceback  # only --debug pays for it

    traceback.print_exc()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckpttool")
@debug_option
def main() -> None:
    """Inspect, scan, convert, remap, diff and check PyTorch checkpoints
    without running code from them.

    Exit codes: 0 clean, 1 findings (differences, unsafe globals, failed
    checks), 2 usage error or unreadable input.
    """
