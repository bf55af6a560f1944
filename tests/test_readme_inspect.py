"""The README's `inspect` and `optimizer` examples: every command line runs (exit 0), and
the output the README shows is what the command prints, at the README's width."""

from __future__ import annotations

import re
import shlex

import pytest
from click.testing import CliRunner
from support.paths import REPO

from ckpttool.cli import main

README = (REPO / "README.md").read_text(encoding="utf-8")
WIDTH = "90"  # the README's text blocks fit this


def section(title: str) -> str:
    start = README.index(f"### `ckpttool {title}")
    return README[start : README.index("\n### ", start + 1)]


def commands(text: str) -> list[str]:
    (block,) = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)[:1]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def shown_outputs(text: str) -> list[tuple[str, str]]:
    """(command, output) for each `$ ckpttool ...` in the section's text blocks."""
    found = []
    for block in re.findall(r"```text\n(.*?)```", text, flags=re.DOTALL):
        for part in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = part.partition("\n")
            found.append((command, output.rstrip("\n")))
    return found


def run(command: str) -> str:
    args = shlex.split(command)
    assert args[0] == "ckpttool"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        result = CliRunner().invoke(main, args[1:], env={"COLUMNS": WIDTH}, catch_exceptions=False)
    assert result.exit_code == 0, (command, result.stderr)
    return result.stdout.rstrip("\n")


INSPECT = section("inspect")


@pytest.mark.parametrize("command", commands(INSPECT))
def test_every_inspect_example_runs(command: str) -> None:
    assert run(command)


@pytest.mark.parametrize(("command", "output"), shown_outputs(INSPECT) + shown_outputs(section("optimizer")))
def test_shown_output_is_what_the_command_prints(command: str, output: str) -> None:
    printed = run(command)
    if output.endswith("\n..."):  # the README shows the first lines only
        assert printed.startswith(output.removesuffix("..."))
    else:
        assert printed == output
