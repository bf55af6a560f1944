"""The pre-commit hook in `.pre-commit-hooks.yaml`: it parses, runs `ckpttool check` on
the files it matches, and fails a commit exactly when `check` finds an error.

pre-commit runs `entry` followed by the hook's `args` and the matching file names;
this file is read by hand (PyYAML is not a dependency) and the entry is run the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from support.groundtruth import COMMITTED_DIR, data_record_offsets
from support.paths import REPO

Cli = Callable[..., Result]
HOOKS_FILE = REPO / ".pre-commit-hooks.yaml"


def scalar(text: str) -> Any:
    """A YAML scalar or flow list as this file writes them: quoted, bare, or `[a, b]`."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [scalar(item) for item in text[1:-1].split(",") if item.strip()]
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        inner = text[1:-1]
        return inner.replace("''", "'") if text[0] == "'" else inner
    return {"true": True, "false": False}.get(text, text)


def parse_hooks(text: str) -> list[dict[str, Any]]:
    """The block sequence of flat mappings a hooks file is: `- key: value` then `  key: value`."""
    hooks: list[dict[str, Any]] = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith("- "):
            hooks.append({})
            line = line[2:]
        else:
            assert line.startswith("  ") and hooks, f"not a hook field: {raw!r}"
        key, sep, value = line.strip().partition(":")
        assert sep, f"not a key: value line: {raw!r}"
        hooks[-1][key] = scalar(value)
    return hooks


@pytest.fixture(scope="module")
def hook() -> dict[str, Any]:
    (only,) = parse_hooks(HOOKS_FILE.read_text())
    return only


def test_hooks_file_parses_with_the_fields_pre_commit_requires(hook: dict[str, Any]) -> None:
    assert {"id", "name", "entry", "language"} <= set(hook)
    assert hook["id"] == "ckpttool-check"
    assert hook["entry"] == "ckpttool check"
    assert hook["language"] == "python"  # pre-commit installs this repository, then runs its script
    assert hook["types"] == ["binary"]
    assert hook["require_serial"] is False


def test_parser_reads_quoted_and_flow_values() -> None:
    text = "# comment\n- id: x\n  files: '(\\.pt)$'\n  types: [binary, file]\n  pass_filenames: true\n"
    assert parse_hooks(text) == [{"id": "x", "files": "(\\.pt)$", "types": ["binary", "file"], "pass_filenames": True}]


@pytest.mark.parametrize(
    "name",
    [
        "model.pt",
        "weights/best.pth",
        "pytorch_model.bin",
        "epoch=3.ckpt",
        "model.safetensors",
        "checkpoint.pth.tar",
        "shards/model-00001-of-00002.safetensors",
    ],  # fmt: skip
)
def test_files_pattern_matches_checkpoints(hook: dict[str, Any], name: str) -> None:
    assert re.search(hook["files"], name)  # pre-commit applies `files` with re.search


@pytest.mark.parametrize(
    "name",
    ["train.py", "README.md", "model.safetensors.index.json", "data.tar", "model.pth.bak", "notes.pt.txt"],
)
def test_files_pattern_skips_other_files(hook: dict[str, Any], name: str) -> None:
    assert not re.search(hook["files"], name)


def console_script() -> Path:
    """The `ckpttool` executable installed next to this interpreter, as pre-commit's
    python environment would have it."""
    found = shutil.which("ckpttool", path=str(Path(sys.executable).parent))
    assert found, "the ckpttool console script is installed"
    return Path(found)


def run_entry(hook: dict[str, Any], *files: Path, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    program, *rest = hook["entry"].split()
    assert program == "ckpttool"
    command = [str(console_script()), *rest, *args, *map(str, files)]
    # pre-commit pipes the output: no terminal, and no shell's COLUMNS to fit tables to
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120, env=env)


def corrupted_copy(source: Path, folder: Path) -> Path:
    """The file with one byte of a storage record changed: its CRC-32 no longer holds."""
    target = folder / source.name
    shutil.copyfile(source, target)
    _, offset = next(iter(data_record_offsets(target)))
    data = bytearray(target.read_bytes())
    data[offset] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


@pytest.mark.slow
def test_entry_passes_clean_files_and_fails_a_corrupted_one(hook: dict[str, Any], tmp_path: Path) -> None:
    """One process over several files, as pre-commit batches them: exit 0 when all hold,
    1 when one has a failed check or cannot be read (every file still reported), 2 only
    when none can be read at all."""
    clean = [COMMITTED_DIR / "cnn_state_dict.pth", COMMITTED_DIR / "cnn.safetensors"]
    passed = run_entry(hook, *clean)
    assert passed.returncode == 0, passed.stderr
    assert passed.stderr == ""

    broken = corrupted_copy(clean[0], tmp_path)
    failed = run_entry(hook, *clean, broken)
    assert failed.returncode == 1
    assert "CRC-32" in failed.stdout and str(broken) in failed.stdout

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    mixed = run_entry(hook, clean[0], empty, clean[1], args=("--format", "json"))
    assert (mixed.returncode, mixed.stderr) == (1, "")
    files = json.loads(mixed.stdout)["files"]
    assert [(f["path"], f["ok"], f["readable"]) for f in files] == [
        (str(clean[0]), True, True),
        (str(empty), False, False),
        (str(clean[1]), True, True),
    ]

    missing = tmp_path / "gone.pt"
    unreadable = run_entry(hook, missing, empty)
    assert unreadable.returncode == 2
    (line,) = unreadable.stderr.splitlines()
    assert str(missing) in line
    assert "UNREADABLE" in unreadable.stdout


def test_entry_with_hook_args(hook: dict[str, Any], cli: Cli) -> None:
    """`args: [--cpu-only]` in a user's config goes between the entry and the file names."""
    _, command = hook["entry"].split()
    cuda = COMMITTED_DIR / "cnn_state_dict_cuda0.pth"
    cpu = COMMITTED_DIR / "cnn_state_dict.pth"
    assert cli(command, "--cpu-only", cpu).exit_code == 0
    result = cli(command, "--cpu-only", cpu, cuda)
    assert result.exit_code == 1
    assert "cuda:0" in result.stdout
