"""Which central directory a zip has, as torch's reader (miniz) and Python's zipfile find it.

Both take the zip64 end record whenever a zip64 locator just before the plain end record
points to one, whatever the plain record says; miniz also skips an end-record signature
too close to the end of the file and looks further back. A zip whose plain end record
names a benign directory and whose zip64 record names another one with a payload was
read by its plain record (`safe`) while torch.load ran the payload.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support.builders import call_global, shell_touch, state_dict_pickle, whole, zip_with_zip64_end
from support.hostile import FileWriter, assert_dangerous, assert_inspect_harmless, assert_not_run, run_cli

_TORCH_LOAD = "import sys, torch\nprint(torch.load(sys.argv[1], weights_only=False))\n"


def torch_loads(path: Path) -> subprocess.CompletedProcess[str]:
    """`torch.load(weights_only=False)` of the file, in a child process."""
    return subprocess.run(
        [sys.executable, "-c", _TORCH_LOAD, str(path)], check=False, timeout=120, capture_output=True, text=True
    )


def torch_records(data_pkl: bytes) -> list[tuple[str, bytes]]:
    return [("archive/data.pkl", data_pkl), ("archive/byteorder", b"little"), ("archive/version", b"3\n")]


def test_a_zip64_record_naming_another_directory_is_the_one_read(write: FileWriter, marker: Path) -> None:
    shown = torch_records(state_dict_pickle([]))
    hidden = torch_records(whole(call_global("os", "system", shell_touch(marker))))
    path = write("shadowed.pt", zip_with_zip64_end(shown, hidden))
    with zipfile.ZipFile(path) as archive:  # Python's zipfile reads the zip64 directory too
        assert archive.read("archive/data.pkl") == hidden[0][1]
    report = assert_dangerous(path, "os.system")
    assert any("zip64 end record" in p for p in report["problems"]), report["problems"]
    assert_inspect_harmless(path)
    assert_not_run(marker)
    torch_loads(path)
    assert marker.exists()  # the directory torch reads


def test_a_zip64_record_agreeing_with_the_plain_one_is_no_finding(write: FileWriter) -> None:
    path = write("zip64.pt", zip_with_zip64_end(torch_records(state_dict_pickle([]))))
    assert torch_loads(path).returncode == 0
    outcome = run_cli("scan", "--format", "json", path)
    assert outcome.exit_code == 0, outcome.stdout
    assert outcome.json()["files"][0]["problems"] == []


@pytest.mark.parametrize("tail", [b"PK\x05\x06", b"PK\x05\x06" + bytes(17)])
def test_an_end_signature_too_close_to_the_end_is_passed_over(write: FileWriter, tail: bytes) -> None:
    """miniz looks further back for one with room for its 22 bytes; torch loads the file."""
    path = write("tailed.pt", zip_with_zip64_end(torch_records(state_dict_pickle([])), trailer=tail))
    assert torch_loads(path).returncode == 0
    outcome = run_cli("inspect", "--format", "json", path)
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.json()["format"] == "torch-zip"
