"""Whole pickled models converted and remapped where their classes cannot be imported.

The fixtures' models were pickled as `__main__.CNN` (a training script) or under a
`models.net` package. A fresh interpreter, started outside the repository, runs the
CLI with an import hook that refuses `models*` and `tutorial_models` and records any
attempt; its `__main__` has no model classes. What it writes is then compared here,
in the test process, with the ground truth (where the classes are made importable).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.groundtruth import (
    TORCH_FORMATS,
    assert_same_content,
    fixture_path,
    ground_truth_weights,
    storage_locations,
    torch_load_trusted,
)
from support.ops import (
    assert_same_tensors,
    ids,
    load_output,
    quiet_torch_notices,
    records_where,
    temp_files,
    unchanged,
)

WHOLE_MODELS = records_where(lambda r: r["whole_model"])

# Runs in the child: block the model classes' homes, then run each command in-process.
DRIVER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = ("models", "tutorial_models")
    attempts = []

    class RefuseModelPackages(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ModuleNotFoundError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, RefuseModelPackages())
    from ckpttool.cli import main

    codes = []
    for args in json.loads(sys.argv[1]):
        codes.append(main.main(args, prog_name="ckpttool", standalone_mode=False) or 0)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"codes": codes, "attempts": attempts, "loaded": loaded}))
    """
)


@dataclass(frozen=True)
class Job:
    record: dict[str, Any]
    folder: Path

    @property
    def src(self) -> Path:
        return fixture_path(self.record)

    def output(self, kind: str) -> Path:
        return self.folder / f"{self.record['name']}.{kind}"

    def commands(self) -> list[list[str]]:
        commands = [
            ["convert", str(self.src), str(self.output("safetensors"))],
            ["convert", "--to", "pth", str(self.src), str(self.output("pt"))],
        ]
        if self.record["format"] in TORCH_FORMATS:
            commands.append(["remap", "--device", "cpu", str(self.src), str(self.output("remapped.pt"))])
        return commands


@dataclass(frozen=True)
class ChildRun:
    codes: dict[str, list[int]]  # fixture name -> exit code of each of its commands
    attempts: list[str]
    loaded: list[str]
    stderr: str
    folder: Path


@pytest.fixture(scope="module")
def child_run(tmp_path_factory: pytest.TempPathFactory) -> ChildRun:
    """One interpreter converts and remaps every whole-model fixture (torch imports once)."""
    folder = tmp_path_factory.mktemp("whole_models")
    jobs = [Job(record, folder) for record in WHOLE_MODELS]
    commands = [command for job in jobs for command in job.commands()]
    sources = [job.src for job in jobs]
    with unchanged(*sources):
        completed = subprocess.run(
            [sys.executable, "-c", DRIVER, json.dumps(commands)],
            capture_output=True,
            text=True,
            cwd=folder,  # not the repository: fixtures/ is not importable from here
            check=False,
            timeout=300,
        )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.splitlines()[-1])
    codes: dict[str, list[int]] = {}
    flat = iter(report["codes"])
    for job in jobs:
        codes[job.record["name"]] = [next(flat) for _ in job.commands()]
    return ChildRun(codes, report["attempts"], report["loaded"], completed.stderr, folder)


pytestmark = pytest.mark.slow


def test_no_model_class_was_imported(child_run: ChildRun) -> None:
    assert child_run.attempts == []
    assert child_run.loaded == []
    assert temp_files(child_run.folder) == []


@pytest.mark.parametrize("record", WHOLE_MODELS, ids=ids(WHOLE_MODELS))
def test_every_command_succeeded(record: dict[str, Any], child_run: ChildRun) -> None:
    codes = child_run.codes[record["name"]]
    assert codes == [0] * len(codes), child_run.stderr


@pytest.mark.parametrize("record", WHOLE_MODELS, ids=ids(WHOLE_MODELS))
@pytest.mark.parametrize(("kind", "to"), [("safetensors", "safetensors"), ("pt", "pth")])
def test_converted_whole_model_equals_its_state_dict(
    record: dict[str, Any], kind: str, to: str, child_run: ChildRun
) -> None:
    output = Job(record, child_run.folder).output(kind)
    assert output.exists(), child_run.stderr
    assert_same_tensors(load_output(output, to), ground_truth_weights(record), ordered=to == "pth")


@pytest.mark.parametrize("record", WHOLE_MODELS, ids=ids(WHOLE_MODELS))
def test_remapped_whole_model_equals_torch_load(record: dict[str, Any], child_run: ChildRun) -> None:
    output = Job(record, child_run.folder).output("remapped.pt")
    assert output.exists(), child_run.stderr
    assert storage_locations(output) == {"cpu"}
    with quiet_torch_notices():
        remapped = torch_load_trusted(output, map_location=None)  # no map_location needed now
    assert_same_content(remapped, torch_load_trusted(fixture_path(record), map_location="cpu"))
