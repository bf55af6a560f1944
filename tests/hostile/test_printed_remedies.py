"""Remedies printed from a file's own names: `from MODULE import NAME` and the
`add_safe_globals` line, and `--allow MODULE.NAME`, are made to be pasted. A GLOBAL
opcode takes any text line as a module or a name, so a file can name a "class" whose
module is `math import pi;exec(...);from math`: pickle imports no such module, but the
import line printed for it runs the payload when pasted.

Each construction is shown to run when its line is pasted (as the remedy spelled it),
then shown `dangerous`, with no line and no `--allow` hint printed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.builders import Op, global_ref, python_touch, torch_zip, value, whole
from support.hostile import FileWriter, assert_dangerous, assert_not_run, run_cli


def spelled(source: str) -> str:
    """`exec(chr(..)+..)`: code without dots or quotes, so it reads as one 'module name'."""
    return "exec(" + "+".join(f"chr({ord(c)})" for c in source) + ")"


def injections(marker: Path) -> dict[str, tuple[str, str]]:
    code = spelled(python_touch(marker))
    return {
        "statements in the module": (f"math import pi;{code};from math", "Net"),
        "statements after the name": ("math", f"pi;{code}"),
        "a name that is no identifier": ("mypkg.models", "Net import os"),
    }


def pasted(module: str, name: str) -> str:
    return f"from {module} import {name}\n"


def instance_of(module: str, name: str) -> bytes:
    return whole(global_ref(module, name) + Op.EMPTY_TUPLE + Op.NEWOBJ + value({"depth": 1}) + Op.BUILD)


@pytest.mark.parametrize("case", ["statements in the module", "statements after the name"])
def test_the_import_line_of_such_a_name_runs_its_payload(marker: Path, case: str) -> None:
    """Ground truth for the construction: the line a remedy would print runs it."""
    module, name = injections(marker)[case]
    subprocess.run([sys.executable, "-c", pasted(module, name)], capture_output=True, check=False, timeout=60)
    assert marker.exists()


@pytest.mark.parametrize(
    "case", ["statements in the module", "statements after the name", "a name that is no identifier"]
)
def test_a_name_no_import_statement_spells_is_dangerous_without_remedy(
    write: FileWriter, marker: Path, case: str
) -> None:
    module, name = injections(marker)[case]
    path = write("injected.pt", torch_zip(instance_of(module, name)))
    report = assert_dangerous(path, f"{module}.{name}")
    assert (report["allowlist"], report["imports"]) == (None, [])
    text = run_cli("scan", path).stdout
    assert "add_safe_globals" not in text and "--allow" not in text
    assert run_cli("check", path).exit_code == 1
    assert_not_run(marker)


def test_a_torchscript_class_spelled_as_a_shell_command_gets_no_allow_hint(write: FileWriter) -> None:
    """`--allow __torch__.m;touch x` pasted in a shell would run the command."""
    path = write("script.pt", torch_zip(instance_of("__torch__", "M;touch x")))
    assert_dangerous(path, "__torch__.M;touch x")
    assert "--allow" not in run_cli("scan", path).stdout


@pytest.mark.parametrize("qualname", ["mypkg.models.Net", "mypkg.模型.Net", "__main__.Net"])
def test_names_of_real_classes_still_get_their_remedy(write: FileWriter, qualname: str) -> None:
    module, _, name = qualname.rpartition(".")
    outcome = run_cli("scan", "--format", "json", write("model.pt", torch_zip(instance_of(module, name))))
    assert outcome.exit_code == 0
    report = outcome.json()["files"][0]
    assert report["allowlist"] == f"torch.serialization.add_safe_globals([{name}])"
