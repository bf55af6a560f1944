"""A SIGKILLed run leaves its temporary outputs; the next run writing there removes them.

Real `ckpttool convert` and `reference train` processes are killed with SIGKILL (nothing
of theirs runs) while their hidden temporary file, DCP folder or staging folder exists;
the leftover is checked to be there, then the next run writing the same destination
must remove it, say so in one stderr line, and write the right output (ground truth:
safetensors' own reader against torch.load of the source). A live writer's files, those
of another host and those whose pid now belongs to another process are told apart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result
from safetensors.torch import load_file
from support.signalling import signal_when

from ckpttool.atomic import TEMP_SUFFIX
from ckpttool.leftovers import owner, remove_leftovers
from ckpttool.reference.staging import STAGING_SUFFIX

pytestmark = pytest.mark.slow

Cli = Callable[..., Result]
ATTEMPTS = 3
REMOVED = "temporary output(s) of a run that was killed"


def leftovers(folder: Path, suffix: str = TEMP_SUFFIX) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(suffix))


def big_source(tmp_path: Path) -> Path:
    """Large enough that writing its output takes a while to catch."""
    src = tmp_path / "src.pt"
    torch.save({"big.weight": torch.arange(24 << 20, dtype=torch.float32).reshape(-1, 1024)}, src)
    return src


def killed_while(args: list[str], ready: Callable[[], bool]) -> subprocess.CompletedProcess[str]:
    for _ in range(ATTEMPTS):
        result = signal_when(args, ready, signal.SIGKILL, {"OMP_NUM_THREADS": "1"}, poll=0.001)
        if result is not None:
            assert result.returncode == -signal.SIGKILL
            return result
    pytest.fail(f"the run finished before it could be killed, {ATTEMPTS} times")


def test_a_killed_conversion_is_cleared_by_the_next(cli: Cli, tmp_path: Path) -> None:
    src, dst = big_source(tmp_path), tmp_path / "out.safetensors"
    killed_while(["convert", str(src), str(dst)], lambda: bool(leftovers(tmp_path)))
    (left,) = leftovers(tmp_path)
    assert not dst.exists()
    result = cli("convert", src, dst)
    assert result.exit_code == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert REMOVED in line and left in line and str(tmp_path) in line, line
    assert leftovers(tmp_path) == []
    expected = torch.load(src, weights_only=True)
    assert torch.equal(load_file(str(dst))["big.weight"], expected["big.weight"])
    again = cli("convert", src, dst, "--force")
    assert (again.exit_code, again.stderr) == (0, "")  # nothing left to say


def test_a_killed_dcp_conversion_is_cleared_by_the_next(cli: Cli, tmp_path: Path) -> None:
    src, dst = big_source(tmp_path), tmp_path / "ckpt"
    killed_while(["convert", str(src), str(dst), "--to", "dcp"], lambda: bool(leftovers(tmp_path)))
    (left,) = leftovers(tmp_path)
    assert (tmp_path / left).is_dir()
    result = cli("convert", src, dst, "--to", "dcp")
    assert result.exit_code == 0, result.stderr
    assert REMOVED in result.stderr and len(result.stderr.splitlines()) == 1
    assert leftovers(tmp_path) == [] and (dst / ".metadata").exists()


def test_a_live_writer_is_left_alone(cli: Cli, tmp_path: Path) -> None:
    """A stopped (SIGSTOP), not killed, writer still owns its file; once killed it does not."""
    src, dst = big_source(tmp_path), tmp_path / "out.safetensors"
    command = [sys.executable, "-m", "ckpttool", "convert", str(src), str(dst)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not leftovers(tmp_path):
            assert child.poll() is None, "the run finished before it could be stopped"
            time.sleep(0.001)
        child.send_signal(signal.SIGSTOP)
        (left,) = leftovers(tmp_path)
        other = cli("convert", src, tmp_path / "other.safetensors")
        assert (other.exit_code, other.stderr) == (0, "")
        assert left in leftovers(tmp_path)
    finally:
        child.kill()
        child.wait()
    result = cli("convert", src, tmp_path / "third.safetensors")
    assert result.exit_code == 0 and left in result.stderr and leftovers(tmp_path) == []


def test_pid_reuse_another_host_and_foreign_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host, pid, start = owner().split("-")
    reused = f".a.pt.{host}-{pid}-{int(start) + 1}.xyz{TEMP_SUFFIX}"  # this pid, another process's start
    elsewhere = f".b.pt.{'0' * 8 if host != '0' * 8 else '1' * 8}-1-1.xyz{TEMP_SUFFIX}"
    mine = f".c.pt.{owner()}.xyz{TEMP_SUFFIX}"
    older = f".d.pt.xyz{TEMP_SUFFIX}"  # no owner in the name: not ours to judge
    backup = f".e.pt.{host}-{pid}-{int(start) + 1}.xyz{TEMP_SUFFIX}.previous"
    for name in (reused, elsewhere, mine, older, backup):
        (tmp_path / name).write_bytes(name.encode())
    assert remove_leftovers(str(tmp_path), TEMP_SUFFIX) == [reused, backup]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([elsewhere, mine, older, "e.pt"])
    assert (tmp_path / "e.pt").read_bytes() == backup.encode()  # what a killed landing moved aside, put back
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"ckpttool: removed 2 {REMOVED}")


def test_a_killed_reference_run_is_cleared_by_the_next(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    args = ["reference", "train", "--model", "nn", "--epochs", "1", "--device", "cpu", "--out", str(out)]
    killed_while(args, lambda: bool(leftovers(out, STAGING_SUFFIX)))
    (left,) = leftovers(out, STAGING_SUFFIX)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "ckpttool", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    removed = [line for line in done.stderr.splitlines() if REMOVED in line]
    assert len(removed) == 1 and left in removed[0], done.stderr
    assert leftovers(out, STAGING_SUFFIX) == [] and (out / "state_dict.pth").exists()
    # What it wrote, scanned as a folder: every file torch.save wrote is an entry with its pickle.
    saved = {str(p) for p in out.iterdir() if zipfile.is_zipfile(p) and _pickled(p)}
    scanned = json.loads(cli("scan", out, "--format", "json").stdout)["files"]
    assert {f["path"] for f in scanned if f["pickles"]} == saved and len(saved) >= 5
    assert {f["verdict"] for f in scanned} <= {"safe", "needs-allowlist"}


def _pickled(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/data.pkl") for name in archive.namelist())
