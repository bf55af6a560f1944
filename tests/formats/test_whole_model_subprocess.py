"""Whole pickled models read by `ckpttool inspect` where their classes do not exist.

Each whole-model fixture is inspected by `python -m ckpttool` in a fresh
interpreter, run from an empty folder with no `PYTHONPATH`, so neither the script's
`__main__` classes nor the `models` package nor `tutorial_models` can be imported
there; a probe in the same environment proves it. The weights ckpttool reports must
still be `model.state_dict()` of the model, which this process loads trusted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import groundtruth as gt
from support.layouts import dtype_name

WHOLE_MODELS = [pytest.param(r["name"], id=r["name"]) for r in gt.load_fixture_index() if r["whole_model"]]
# Where the fixtures' model classes really live; must not be importable either.
REAL_HOME = "tutorial_models"
# Tries each `module.Name` given; prints one verdict per line.
IMPORT_PROBE = """
import importlib, sys
for qualname in sys.argv[1:]:
    module, _, name = qualname.rpartition(".")
    try:
        if module:
            getattr(importlib.import_module(module), name)
        else:
            importlib.import_module(name)
    except (ImportError, AttributeError) as exc:
        print(qualname, "missing", type(exc).__name__)
    else:
        print(qualname, "importable")
"""


def bare_environment() -> dict[str, str]:
    """This interpreter's environment without PYTHONPATH: only the installed packages."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=bare_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def inspect_in_subprocess(path: Path, cwd: Path) -> dict[str, Any]:
    completed = run_python(["-m", "ckpttool", "inspect", "--format", "json", str(path)], cwd)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    report: dict[str, Any] = json.loads(completed.stdout)
    return report


def user_classes(report: dict[str, Any]) -> list[str]:
    """Classes of the pickled objects that are not torch's own."""
    return sorted({o["class"] for o in report["objects"] if not o["class"].startswith("torch.")})


def probe_imports(qualnames: list[str], cwd: Path) -> dict[str, str]:
    completed = run_python(["-c", IMPORT_PROBE, *qualnames], cwd)
    assert completed.returncode == 0, completed.stderr
    verdicts = dict(line.split(" ", 1) for line in completed.stdout.splitlines())
    return verdicts


@pytest.mark.slow
@pytest.mark.parametrize("name", WHOLE_MODELS)
def test_whole_model_is_inspected_without_its_class(name: str, tmp_path: Path) -> None:
    record = gt.fixture_record(name)
    path = gt.fixture_path(record)
    report = inspect_in_subprocess(path, tmp_path)

    classes = user_classes(report)
    assert classes, "a whole model names its own class"
    pickled = gt.globals_of(whole_model_pickle(path, record["format"]))
    assert set(classes) <= pickled  # reported as the file names them
    verdicts = probe_imports([*classes, REAL_HOME], tmp_path)
    importable = [q for q, verdict in verdicts.items() if verdict == "importable"]
    assert importable == [], f"the reading interpreter could import {importable}"

    model = gt.weights_at(gt.torch_load_trusted(path), record["weights_root"])
    expected = [(k, list(t.shape), dtype_name(t.dtype)) for k, t in model.items()]
    weights = report["weights"]
    assert weights["root"] == record["weights_root"]
    assert weights["kind"] == "module"
    assert [(t["key"], t["shape"], t["dtype"]) for t in weights["tensors"]] == expected


def whole_model_pickle(path: Path, fmt: str) -> bytes:
    if fmt == "torch-legacy":
        return gt.legacy_main_pickle(path)
    return gt.zip_record(path, "/data.pkl")
