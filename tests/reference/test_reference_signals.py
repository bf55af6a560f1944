"""Killed cleanly: `reference train` stopped at any moment leaves its output folder as it was.

Real `ckpttool reference train` processes (the nn model on digits, 3 epochs, a periodic
checkpoint after epochs 1 and 2) are sent SIGTERM, SIGHUP or SIGINT at one of three
moments, found by watching the hidden staging folder the run writes into: as soon as it
exists (training starting), once the first periodic checkpoint is in it (training goes
on), and once the first final style is in it (the other styles and the manifest still to
come). Each run must exit with 128 + the signal after one stderr line besides the epoch
lines, remove its staging folder, and leave the destination as it was: absent (its
missing parent too), or an existing folder whose every file has the sha256 it had. A
completed run lands the same files as before staging existed, which `reference check`
accepts.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.signalling import signal_when

from ckpttool.cli import main
from ckpttool.errors import UsageError
from ckpttool.reference.manifest import MANIFEST_NAME, read_manifest
from ckpttool.reference.saving import SAVE_STYLES
from ckpttool.reference.staging import STAGING_SUFFIX, staged_folder

pytestmark = pytest.mark.slow

ATTEMPTS = 3  # a run that ends before the moment it waits for is tried again
EPOCHS = 3
TRAIN_ARGS = ["reference", "train", "--model", "nn", "--epochs", str(EPOCHS), "--checkpoint-every", "1"]
TRAIN_ARGS += ["--device", "cpu"]
# What `reference train` wrote before the set was staged (observed with these options).
LANDED = {
    "checkpoint_epoch001.pth.tar",
    "checkpoint_epoch002.pth.tar",
    "state_dict.pth",
    "model.pth",
    "checkpoint.pth.tar",
    "model_optimizer.pt",
    "general_checkpoint.tar",
    "model.safetensors",
    MANIFEST_NAME,
}
EPOCH_LINE = re.compile(r"epoch \d+/\d+: loss \d+\.\d+ \(\d+ steps\)")
# Each signal and each moment at least once (a start costs seconds of imports, so not all
# nine pairs); at the last moment, where the landing comes next, both kinds of destination.
CASES = [
    pytest.param(sig, moment, existing, id=f"{sig.name}-{moment}-{'existing' if existing else 'new'}")
    for sig, moment, existing in [
        (signal.SIGINT, "staging-created", True),
        (signal.SIGHUP, "first-periodic-staged", False),
        (signal.SIGTERM, "final-styles-staging", False),
        (signal.SIGHUP, "final-styles-staging", True),
    ]
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def contents(folder: Path) -> dict[str, str]:
    """Every entry under `folder`, hidden ones included, with its sha256 (folders: "")."""
    return {str(p.relative_to(folder)): "" if p.is_dir() else sha256(p) for p in sorted(folder.rglob("*"))}


def leftovers(root: Path) -> list[str]:
    """Staging folders and the temporary names written inside them."""
    marks = (STAGING_SUFFIX, ".partial", ".ckpttool-tmp", ".previous")
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if any(mark in p.name for mark in marks))


def prepare_existing(out: Path) -> None:
    """A folder from an earlier run: an unrelated file, files of the names a run writes."""
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("kept whatever happens\n")
    (out / "state_dict.pth").write_bytes(b"an earlier state_dict, replaced only by a whole set")
    (out / MANIFEST_NAME).write_text('{"an": "earlier manifest"}\n')


def staged(base: Path, name: str | None) -> bool:
    """Whether a staging folder exists in `base` (holding `name`, when given)."""
    try:
        folders = [p for p in base.iterdir() if p.name.endswith(STAGING_SUFFIX)]
    except FileNotFoundError:
        return False
    return any(name is None or (folder / name).exists() for folder in folders)


def awaited_file(moment: str) -> str | None:
    if moment == "first-periodic-staged":
        return "checkpoint_epoch001.pth.tar"
    if moment == "final-styles-staging":
        return SAVE_STYLES["state-dict"].file_name  # the first final style written
    return None


def signal_at(moment: str, out: Path, sig: int) -> subprocess.CompletedProcess[str] | None:
    """Run `reference train --out out`; send `sig` at `moment`. None when the run ended first."""
    # The staging folder goes inside an existing destination, else beside it.
    base = out if out.is_dir() else out.parent.parent
    args = [*TRAIN_ARGS, "--out", str(out)]
    return signal_when(args, lambda: staged(base, awaited_file(moment)), sig, {"OMP_NUM_THREADS": "1"}, poll=0.001)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "moment", "existing"), CASES)
def test_a_stopped_run_leaves_the_destination_as_it_was(
    sig: signal.Signals, moment: str, existing: bool, tmp_path: Path
) -> None:
    # A new destination whose parent is missing too: neither may be left behind.
    out = tmp_path / "existing" if existing else tmp_path / "runs" / "nn"
    for _ in range(ATTEMPTS):
        if existing:
            prepare_existing(out)
        before = contents(tmp_path)
        result = signal_at(moment, out, sig)
        if result is not None:
            break
        for path in tmp_path.iterdir():  # it finished first: start again from the same state
            shutil.rmtree(path)
    else:
        pytest.fail(f"reference train finished before '{moment}' in {ATTEMPTS} attempts")
    assert result.returncode == 128 + sig, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if not EPOCH_LINE.fullmatch(line)]
    assert lines == [f"ckpttool: stopped by {sig.name}; temporary outputs removed"], result.stderr
    assert leftovers(tmp_path) == []
    assert contents(tmp_path) == before  # absent stays absent; every earlier file keeps its bytes
    assert out.exists() == existing
    if not existing:
        assert not (tmp_path / "runs").exists()  # nor its parent, missing before the run


@pytest.mark.slow
def test_a_completed_run_lands_the_whole_set_beside_the_earlier_files(tmp_path: Path) -> None:
    out = tmp_path / "existing"
    prepare_existing(out)
    notes = sha256(out / "notes.txt")
    result = CliRunner().invoke(main, [*TRAIN_ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == LANDED | {"notes.txt"}
    assert sha256(out / "notes.txt") == notes
    assert leftovers(tmp_path) == []
    manifest = read_manifest(out)
    assert {record.path for record in manifest.files} == LANDED - {MANIFEST_NAME}
    for record in manifest.files:  # hashed while staged, true of the landed file
        assert (sha256(out / record.path), (out / record.path).stat().st_size) == (record.sha256, record.size)
    check = CliRunner().invoke(main, ["reference", "check", str(out), "--resume-epochs", "0"])
    assert check.exit_code == 0, check.output


# -- the staging folder itself, without training ---------------------------------------------------


def test_landing_creates_missing_folders_and_a_failed_landing_removes_them(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    with staged_folder(out) as staging:
        (staging.folder / "one.bin").write_bytes(b"1")
        with pytest.raises(FileNotFoundError):
            staging.land(["one.bin", "never-written.bin"])
        assert not (tmp_path / "a").exists()  # `one.bin` landed and was removed again, then the folders
        for name in ("one.bin", "two.bin"):
            (staging.folder / name).write_bytes(name.encode())
        staging.land(["one.bin", "two.bin"])
    assert contents(tmp_path) == {
        "a": "",
        "a/b": "",
        "a/b/one.bin": hashlib.sha256(b"one.bin").hexdigest(),
        "a/b/two.bin": hashlib.sha256(b"two.bin").hexdigest(),
    }


def test_an_error_before_landing_removes_the_staging_folder(tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_text("kept")
    before = contents(tmp_path)
    with pytest.raises(RuntimeError), staged_folder(tmp_path) as staging:
        assert staging.folder.parent == tmp_path and staging.folder.name.endswith(STAGING_SUFFIX)
        (staging.folder / "kept.txt").write_text("a new file of the same name")
        raise RuntimeError("training failed")
    assert contents(tmp_path) == before


def test_a_folder_of_a_fixture_name_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "model.pth").mkdir()
    (tmp_path / "model.pth" / "inside.txt").write_text("a user's folder")
    with staged_folder(tmp_path) as staging:
        (staging.folder / "model.pth").write_bytes(b"weights")
        with pytest.raises(UsageError, match="is a folder"):
            staging.land(["model.pth"])
    assert (tmp_path / "model.pth" / "inside.txt").read_text() == "a user's folder"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_a_file_is_refused_as_the_destination(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file")
    with pytest.raises(UsageError, match="not a folder"), staged_folder(tmp_path / "out"):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
