"""`--allow MODULE.NAME`, shared by scan and check."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def allow_option(func: F) -> F:
    return click.option(
        "--allow",
        "allow",
        multiple=True,
        metavar="MODULE.NAME",
        help="Count this global as vetted: its calls are no longer unknown (repeatable). "
        "Also read from [tool.ckpttool] allow in the nearest pyproject.toml. Known gadgets stay dangerous.",
    )(func)


def resolve_allow(flags: tuple[str, ...]) -> dict[str, str]:
    """The names allowed for this run (the flags, then the project's pyproject.toml), by source."""
    from ckpttool.ops.safety import allowed_names

    return allowed_names(flags)
