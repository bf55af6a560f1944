"""`inspect` of a torch zip imports only what reading a torch zip needs: start-up time is
most of a large file's inspect, and the other formats' readers are most of the imports."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from tests.conftest import COMMITTED_FIXTURES, REPO

# The readers a torch zip never needs, torch itself, and logging (set up only by the
# commands that write outputs).
NOT_IMPORTED = (
    "torch",
    "logging",
    "ckpttool.formats.dcp",
    "ckpttool.formats.dcp_format",
    "ckpttool.formats.dcp_metadata",
    "ckpttool.formats.dcp_megatron",
    "ckpttool.formats.deepspeed",
    "ckpttool.formats.deepspeed_files",
    "ckpttool.formats.deepspeed_layout",
    "ckpttool.formats.deepspeed_slices",
    "ckpttool.formats.joblib",
    "ckpttool.formats.legacy",
)

# Runs the command in this process, then prints its exit status and the modules it imported.
PROGRAM = """
import json, runpy, sys
sys.argv = ["ckpttool", sys.argv[1], sys.argv[2], "--format", "json"]
try:
    runpy.run_module("ckpttool", run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def imported_by(command: str, path: str) -> tuple[int, set[str], str]:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, command, path], capture_output=True, text=True, cwd=REPO, check=False
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    return report["code"], set(report["modules"]), result.stdout


def test_inspect_of_a_torch_zip_imports_no_other_reader_and_no_torch() -> None:
    path = str(COMMITTED_FIXTURES / "cnn_state_dict.pth")
    code, modules, output = imported_by("inspect", path)
    assert code == 0
    assert json.loads(output)["format"] == "torch-zip"
    assert "ckpttool.formats.torchzip" in modules  # what it did import: the reader of its format
    assert sorted(modules.intersection(NOT_IMPORTED)) == []


def test_the_readers_left_out_exist() -> None:
    # A renamed module would make the test above pass whatever is imported.
    assert [name for name in NOT_IMPORTED if importlib.util.find_spec(name) is None] == []


def test_inspect_of_a_dcp_folder_does_import_its_reader(dcp_world1: object) -> None:
    code, modules, _ = imported_by("inspect", str(dcp_world1))
    assert code == 0
    assert "ckpttool.formats.dcp_format" in modules
    assert "torch" not in modules
