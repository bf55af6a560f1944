"""The documentation's `inspect` and `optimizer` examples (README.md and docs/*.md): every
`ckpttool inspect` command line runs (exit 0), and the output the documentation shows is
what the command prints, at the documentation's width."""

from __future__ import annotations

import re
import shlex

import pytest
from click.testing import CliRunner
from support.docs import REPO, fenced_blocks, section

from ckpttool.cli import main

WIDTH = "90"  # the documentation's text blocks fit this


def commands(text: str) -> list[str]:
    (block,) = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)[:1]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def every_inspect_command() -> list[str]:
    """The inspect section's examples, then every other `ckpttool inspect` line of a bash
    block anywhere in the documentation, each once."""
    found = commands(section("inspect"))
    for block in fenced_blocks("bash"):
        found += [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("ckpttool inspect ")]
    return list(dict.fromkeys(found))


def shown_outputs(text: str) -> list[tuple[str, str]]:
    """(command, output) for each `$ ckpttool ...` in the text's text blocks."""
    found = []
    for block in re.findall(r"```text\n(.*?)```", text, flags=re.DOTALL):
        for part in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = part.partition("\n")
            found.append((command, output.rstrip("\n")))
    return found


def every_shown_output() -> list[tuple[str, str]]:
    """The outputs the inspect and optimizer sections show, then any other shown output of
    those commands in the documentation, each once."""
    found = shown_outputs(section("inspect")) + shown_outputs(section("optimizer"))
    everywhere = shown_outputs("".join(f"```text\n{block}```" for block in fenced_blocks("text")))
    found += [(c, o) for c, o in everywhere if c.startswith(("ckpttool inspect ", "ckpttool optimizer "))]
    return list(dict.fromkeys(found))


def run(command: str) -> str:
    args = shlex.split(command)
    assert args[0] == "ckpttool"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        result = CliRunner().invoke(main, args[1:], env={"COLUMNS": WIDTH}, catch_exceptions=False)
    assert result.exit_code == 0, (command, result.stderr)
    return result.stdout.rstrip("\n")


@pytest.mark.parametrize("command", every_inspect_command())
def test_every_inspect_example_runs(command: str) -> None:
    assert run(command)


@pytest.mark.parametrize(("command", "output"), every_shown_output())
def test_shown_output_is_what_the_command_prints(command: str, output: str) -> None:
    printed = run(command)
    if output.endswith("\n..."):  # the documentation shows the first lines only
        assert printed.startswith(output.removesuffix("..."))
    else:
        assert printed == output
