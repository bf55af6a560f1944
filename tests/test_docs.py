"""Every command documents itself and is documented in the README."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner
from support.paths import REPO

from ckpttool.cli import COMMANDS, main

README = (REPO / "README.md").read_text(encoding="utf-8")


def all_commands() -> list[tuple[str, click.Command]]:
    context = click.Context(main)
    found = []
    for name in main.list_commands(context):
        command = main.get_command(context, name)
        assert command is not None
        found.append((name, command))
        if isinstance(command, click.Group):
            found += [(f"{name} {sub}", command.commands[sub]) for sub in command.list_commands(context)]
    return found


@pytest.mark.parametrize(("name", "command"), all_commands(), ids=[n for n, _ in all_commands()])
def test_command_has_help_and_is_in_the_readme(name: str, command: click.Command) -> None:
    assert (command.help or "").strip(), f"{name} has no help text"
    assert f"ckpttool {name}" in README, f"the README does not show `ckpttool {name}`"
    result = CliRunner().invoke(main, [*name.split(), "--help"])
    assert result.exit_code == 0 and "Usage:" in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_is_explained(name: str) -> None:
    command = main.get_command(click.Context(main), name)
    assert command is not None
    for param in command.params:
        if isinstance(param, click.Option):
            assert (param.help or "").strip(), f"{name} {param.opts[0]} has no help"


def test_readme_opens_with_the_two_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    first = [line for line in blocks[0].splitlines() if line.strip()]
    assert len(first) == 2
    assert "ckpttool inspect fixtures/files/" in first[0]
    assert "pytest" in first[1]
    fixture = first[0].split("ckpttool inspect ", 1)[1].strip()
    assert (REPO / fixture).is_file()
