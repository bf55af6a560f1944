"""Modules whose import is their effect: the unpickler imports a global's module before it
looks the name up, so a pickle that only names `antigravity.x` (a name that does not even
exist) opens a web browser, and one naming `package.__main__.x` runs that package's
command-line program on the loading process's own command line.

Each is shown to act under `pickle.loads` in a child process, then shown `dangerous` with
no allowlist line, and harmless for every command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.builders import Op, global_ref, shell_touch, torch_zip, value, whole
from support.hostile import FileWriter, assert_dangerous, assert_inspect_harmless, assert_not_run, run_cli

# The file comes on stdin, so the loader's command line is only `-c`.
_LOAD = "import pickle, sys\ntry:\n    pickle.loads(sys.stdin.buffer.read())\nexcept Exception:\n    pass\n"


def only_named(module: str) -> bytes:
    """A pickle that names `module.x` and drops it: nothing is called."""
    return whole(global_ref(module, "x") + Op.POP + value({}))


def naive_load(path: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", _LOAD],
        input=path.read_bytes(),
        env={**os.environ, **env},
        check=False,
        timeout=60,
        capture_output=True,
    )


def assert_flagged_and_harmless(path: Path, qualname: str) -> None:
    report = assert_dangerous(path, qualname)
    assert report["allowlist"] is None
    assert run_cli("check", path).exit_code == 1
    assert_inspect_harmless(path)


@pytest.mark.slow
def test_naming_antigravity_opens_a_browser_and_is_dangerous(write: FileWriter, marker: Path, tmp_path: Path) -> None:
    browser = tmp_path / "browser"
    browser.write_text(f"#!/bin/sh\n{shell_touch(marker)}\n")
    browser.chmod(0o755)
    raw = write("antigravity.pkl", only_named("antigravity"))
    naive_load(raw, BROWSER=str(browser))
    assert marker.exists(), "importing antigravity must run the browser"
    marker.unlink()
    for path in (raw, write("antigravity.pt", torch_zip(only_named("antigravity")))):
        assert_flagged_and_harmless(path, "antigravity.x")
    assert_not_run(marker)


@pytest.mark.slow
def test_naming_a_packages_main_runs_its_program_and_is_dangerous(write: FileWriter) -> None:
    module = "torch.utils.model_dump.__main__"
    raw = write("main.pkl", only_named(module))
    done = naive_load(raw)
    # The program parsed the loader's own command line and exited the process (SystemExit
    # is no Exception, so the loader's try does not catch it).
    assert done.returncode == 2 and b"usage:" in done.stderr, done.stderr
    for path in (raw, write("main.pt", torch_zip(only_named(module)))):
        assert_flagged_and_harmless(path, f"{module}.x")


@pytest.mark.parametrize("module", ["numpy.__main__", "this", "__hello__"])
def test_other_modules_acting_on_import_are_dangerous(write: FileWriter, module: str) -> None:
    assert_flagged_and_harmless(write("named.pt", torch_zip(only_named(module))), f"{module}.x")


def test_the_running_script_is_no_program_to_flag(write: FileWriter) -> None:
    """Classes defined in a training script are pickled as `__main__.Name`."""
    body = global_ref("__main__", "Net") + Op.EMPTY_TUPLE + Op.NEWOBJ + value({"depth": 2}) + Op.BUILD
    outcome = run_cli("scan", write("script.pt", torch_zip(whole(body))))
    assert outcome.exit_code == 0, outcome.stdout
