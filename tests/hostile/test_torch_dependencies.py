"""Classes of the packages installing torch brings along (sympy, networkx, fsspec, jinja2,
...): a hostile file can count on them wherever torch.load runs, so they are no user's own
model. Only instantiating one with NEWOBJ runs its `__new__` with the pickle's arguments,
and sympy's Matrix sympifies (evaluates as Python) the strings it is given.

Each construction is shown to run under `pickle.loads` and under the `add_safe_globals`
line a `needs-allowlist` verdict would have printed, then shown flagged and run nowhere.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.builders import Op, global_ref, torch_zip, value, whole
from support.hostile import (
    FileWriter,
    assert_dangerous,
    assert_inspect_harmless,
    assert_no_crash,
    assert_not_run,
    global_entry,
    only_file,
    run_cli,
    scan,
)

_MATRIX = ("sympy.matrices.dense", "MutableDenseMatrix")
_NAIVE = "import pickle, sys\npickle.loads(open(sys.argv[1], 'rb').read())\n"
_ALLOWLISTED = (
    "import importlib, sys, torch\n"
    "cls = getattr(importlib.import_module(sys.argv[2]), sys.argv[3])\n"
    "torch.serialization.add_safe_globals([cls])\n"
    "torch.load(sys.argv[1], weights_only=True)\n"
)


def sympified_matrix(marker: Path) -> bytes:
    """Matrix.__new__(Matrix, [[source]]): each element is sympified, and sympify evaluates a
    string as Python."""
    source = f"__import__('os').system('touch {marker}')"
    return whole(global_ref(*_MATRIX) + value(([[source]],)) + Op.NEWOBJ)


def runs(marker: Path, *command: str) -> bool:
    subprocess.run([sys.executable, "-c", *command], check=False, timeout=120, capture_output=True)
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


@pytest.mark.slow
def test_a_sympy_matrix_evaluating_its_elements_is_dangerous_and_never_runs(write: FileWriter, marker: Path) -> None:
    raw = write("matrix.pkl", sympified_matrix(marker))
    archive = write("matrix.pt", torch_zip(sympified_matrix(marker)))
    assert runs(marker, _NAIVE, str(raw)), "pickle.loads must run the payload"
    assert runs(marker, _ALLOWLISTED, str(archive), *_MATRIX), "so must torch.load after allowlisting the class"
    for path in (raw, archive):
        report = assert_dangerous(path, ".".join(_MATRIX))
        assert report["allowlist"] is None
        assert run_cli("check", path).exit_code == 1
        assert_inspect_harmless(path)
    assert_not_run(marker)


@pytest.mark.parametrize(
    "module, name",
    [("networkx.classes.graph", "Graph"), ("fsspec.implementations.local", "LocalFileOpener"), ("mpmath", "mpf")],
)
def test_a_class_of_a_package_torch_installs_is_no_users_own(write: FileWriter, module: str, name: str) -> None:
    """Instantiated and given state, such a class is judged as the standard library's are:
    its __new__, __setstate__ and __del__ are code the pickle steers (fsspec's file opener
    opens the path its state names)."""
    body = global_ref(module, name) + Op.EMPTY_TUPLE + Op.NEWOBJ + value({"path": "/x", "mode": "rb"}) + Op.BUILD
    path = write("dependency.pt", torch_zip(whole(body)))
    outcome = scan(path)
    assert_no_crash(outcome)
    assert outcome.exit_code == 1
    report = only_file(outcome)
    assert report["verdict"] == "unknown-call"
    assert global_entry(report, f"{module}.{name}")["verdict"] == "unknown-call"


def test_a_class_of_the_users_own_package_still_needs_only_an_allowlist(write: FileWriter) -> None:
    body = global_ref("my_project.models", "Net") + Op.EMPTY_TUPLE + Op.NEWOBJ + value({"depth": 3}) + Op.BUILD
    outcome = scan(write("own.pt", torch_zip(whole(body))))
    assert outcome.exit_code == 0
    assert only_file(outcome)["verdict"] == "needs-allowlist"
