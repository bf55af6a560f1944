"""An encrypted zip record: nothing can read it (torch refuses the file) and nothing can
scan it, so the file is unreadable (exit 2, one line), never a finding. Its payload runs
nowhere."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from support.builders import ZipMember, encrypted, torch_zip_members, zip_bytes
from support.cli import assert_one_error_line
from support.hostile import FileWriter, assert_not_run, run_cli, torch_accepts
from support.payloads import inner_system_pickle


def locked(members: list[ZipMember], suffix: str) -> bytes:
    return zip_bytes([encrypted(m) if m.name.endswith(suffix) else m for m in members])


def test_the_builder_encrypts_as_zipfile_decrypts(marker: Path) -> None:
    data = locked([ZipMember("model.pkl", inner_system_pickle(marker))], "model.pkl")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        with pytest.raises(RuntimeError, match="password required"):
            archive.read("model.pkl")
        assert archive.read("model.pkl", pwd=b"secret") == inner_system_pickle(marker)


@pytest.mark.parametrize("command", ["scan", "check", "inspect"])
@pytest.mark.parametrize("record", ["data.pkl", "data/0"])
def test_an_encrypted_torch_record_is_unreadable(write: FileWriter, marker: Path, command: str, record: str) -> None:
    members = torch_zip_members(inner_system_pickle(marker), {"0": b"\0" * 24})
    path = write("locked.pt", locked(members, record))
    assert not torch_accepts(path)
    line = assert_one_error_line(run_cli(command, path), path.name, fmt=None)
    assert "encrypted: cannot be scanned" in line
    assert_not_run(marker)


def test_an_encrypted_member_of_a_plain_zip_is_unreadable(write: FileWriter, marker: Path) -> None:
    path = write(
        "bundle.zip",
        locked([ZipMember("notes.txt", b"hi"), ZipMember("model.pkl", inner_system_pickle(marker))], "model.pkl"),
    )
    assert "encrypted: cannot be scanned" in assert_one_error_line(run_cli("scan", path), path.name, fmt=None)
    assert_not_run(marker)


def test_an_encrypted_zip_inside_a_tar_is_unreadable(write: FileWriter, marker: Path) -> None:
    inner = locked([ZipMember("model.pkl", inner_system_pickle(marker))], "model.pkl")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("weights.zip")
        info.size = len(inner)
        tar.addfile(info, io.BytesIO(inner))
    path = write("bundle.tar", buffer.getvalue())
    assert "encrypted: cannot be scanned" in assert_one_error_line(run_cli("scan", path), path.name, fmt=None)
    assert_not_run(marker)
