"""Every command documents itself and is documented in the README; every relative link of the
documentation points to a file in the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from support.docs import DOC_PATHS, LINKED_PATHS, README, REPO, anchored_links, anchors, fenced_blocks, relative_links

from ckpttool.cli import COMMANDS, main


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


@pytest.mark.parametrize("path", LINKED_PATHS, ids=[p.relative_to(REPO).as_posix() for p in LINKED_PATHS])
def test_every_relative_link_points_to_a_file_in_the_repository(path: Path) -> None:
    assert path.is_file(), f"{path.relative_to(REPO)} is missing"
    for target in relative_links(path):
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(REPO), f"{path.name} links outside the repository: {target}"
        assert resolved.exists(), f"{path.name} links to {target}, which does not exist"
    for file, anchor in anchored_links(path):
        if file.suffix == ".md":
            assert anchor in anchors(file), f"{path.name} links to #{anchor}, no heading of {file.name}"


def test_the_documentation_has_pages_and_links() -> None:
    """The link test above checks something: the README links to every page of docs/."""
    pages = [p for p in LINKED_PATHS if p.parent == REPO / "docs"]
    assert pages
    linked = {(REPO / target).resolve() for target in relative_links(REPO / "README.md")}
    assert {p.resolve() for p in pages} <= linked
    assert (REPO / "CHANGELOG.md").resolve() in linked


LIBRARY_EXAMPLES = [block for block in fenced_blocks("python") if "import ckpttool" in block]


@pytest.mark.parametrize("code", LIBRARY_EXAMPLES, ids=[f"example{i}" for i in range(len(LIBRARY_EXAMPLES))])
def test_library_examples_run_as_shown(tmp_path: Path, code: str) -> None:
    """Each Python example of the README and docs/, run as a user would from a clone (its
    outputs written under a scratch folder)."""
    (tmp_path / "fixtures").symlink_to(REPO / "fixtures")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_the_library_page_shows_every_public_function() -> None:
    import ckpttool

    (page,) = [p for p in DOC_PATHS if p.name == "library.md"]
    shown = page.read_text(encoding="utf-8")
    functions = [name for name in ckpttool.__all__ if name[0].islower()]
    assert functions and all(f"ckpttool.{name}(" in shown for name in functions), functions
