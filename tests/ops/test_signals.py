"""Killed cleanly: SIGTERM, SIGHUP and SIGINT stop a long write and leave nothing behind.

Real `ckpttool` processes convert (plain and sharded) and remap a 200 MB checkpoint and
are sent a signal at one of three moments, found by watching the destination folder:
just after the first temporary file appears, part-way through writing, and once all
bytes are written and the output is being verified. Each run must exit with 128 + the
signal, print one line, leave no temporary file, shard or index, leave DST absent (or,
with --force, byte for byte as it was) and SRC's sha256 unchanged. Every command meets
every signal, and every signal every moment.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from support.signalling import signal_when

from ckpttool.signals import Interrupted, held, stopping_cleanly

pytestmark = pytest.mark.slow

TENSORS, ROWS, COLUMNS = 4, 2048, 6144  # four float32 tensors of 48 MiB
SOURCE_BYTES = TENSORS * ROWS * COLUMNS * 4
SIGNALS = [signal.SIGTERM, signal.SIGHUP, signal.SIGINT]
MOMENTS = ["start", "writing", "verifying"]
ATTEMPTS = 4  # a run that finishes before the moment it waits for is tried again


@dataclass(frozen=True)
class Command:
    name: str
    args: Callable[[Path, Path], list[str]]
    dst_name: str
    existing_dst: bool = False  # DST exists and --force replaces it


COMMANDS = [
    Command("convert", lambda src, dst: ["convert", str(src), str(dst)], "out.safetensors"),
    Command(
        "convert-sharded",
        lambda src, dst: ["convert", str(src), str(dst), "--shard-size", "60MB"],
        "model.safetensors",
    ),
    Command("remap", lambda src, dst: ["remap", str(src), str(dst), "--device", "cpu"], "out.pt"),
    Command(
        "convert-force",
        lambda src, dst: ["convert", str(src), str(dst), "--force"],
        "out.safetensors",
        existing_dst=True,
    ),
]
# A Latin square: each command meets every signal once, each signal every moment.
CASES = [
    pytest.param(command, sig, MOMENTS[(i + j) % len(MOMENTS)], id=f"{command.name}-{sig.name}-{MOMENTS[(i + j) % 3]}")
    for i, command in enumerate(COMMANDS)
    for j, sig in enumerate(SIGNALS)
]


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("signals-src")
    generator = torch.Generator().manual_seed(0)
    weights = {f"layer{i}.weight": torch.randn(ROWS, COLUMNS, generator=generator) for i in range(TENSORS)}
    path = folder / "big.pt"
    torch.save(weights, path)
    return path, sha256(path)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def temporaries(folder: Path) -> list[Path]:
    """Temporary outputs, and files they displaced during a rename (`*.previous`)."""
    return [p for p in folder.iterdir() if ".ckpttool-tmp" in p.name]


def reached(moment: str, folder: Path) -> bool:
    sizes = []
    for path in temporaries(folder):
        try:
            sizes.append(path.stat().st_size)
        except FileNotFoundError:  # renamed or removed between listing and stat
            pass
    if not sizes:
        return False
    written = sum(sizes)
    if moment == "start":
        return True
    if moment == "writing":
        return SOURCE_BYTES // 4 <= written < SOURCE_BYTES * 3 // 4
    return written >= SOURCE_BYTES  # all tensor bytes are out: verification is under way


def signal_at(moment: str, folder: Path, args: list[str], sig: int) -> subprocess.CompletedProcess[str] | None:
    """Run, send `sig` once `moment` is reached; None when the run ended first."""
    return signal_when(args, lambda: reached(moment, folder), sig)


def leftovers(folder: Path, dst: Path) -> list[str]:
    stem = dst.name.split(".", 1)[0]
    return sorted(
        p.name
        for p in folder.iterdir()
        if ".ckpttool-tmp" in p.name or p.name.startswith(f"{stem}-0") or p.name.endswith(".index.json")
    )


@pytest.mark.parametrize(("command", "sig", "moment"), CASES)
def test_a_signal_leaves_nothing_behind(
    command: Command, sig: signal.Signals, moment: str, big_source: tuple[Path, str], tmp_path: Path
) -> None:
    src, src_sha = big_source
    dst = tmp_path / command.dst_name
    previous = b"the previous output, which must survive"
    for _ in range(ATTEMPTS):
        if command.existing_dst:
            dst.write_bytes(previous)
        result = signal_at(moment, tmp_path, command.args(src, dst), sig)
        if result is not None:
            break
        for path in tmp_path.iterdir():  # it finished first: clear the folder and try again
            path.unlink()
    else:
        pytest.fail(f"{command.name} finished before '{moment}' in {ATTEMPTS} attempts")
    assert result.returncode == 128 + sig, (result.returncode, result.stderr)
    assert result.stderr.splitlines() == [f"ckpttool: stopped by {sig.name}; temporary outputs removed"]
    assert leftovers(tmp_path, dst) == []
    if command.existing_dst:
        assert dst.read_bytes() == previous
    else:
        assert not dst.exists()
    assert sha256(src) == src_sha


def test_a_second_signal_does_not_cut_the_cleanup_short(big_source: tuple[Path, str], tmp_path: Path) -> None:
    src, src_sha = big_source
    dst = tmp_path / "model.safetensors"
    args = ["convert", str(src), str(dst), "--shard-size", "60MB"]
    every = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for _ in range(ATTEMPTS):
        result = signal_when(args, lambda: len(temporaries(tmp_path)) >= 2, every)
        if result is not None:
            break
        for path in tmp_path.iterdir():
            path.unlink()
    assert result is not None, f"convert finished before the signals {ATTEMPTS} times"
    # The kernel hands pending signals over lowest number first: any of them may be first.
    assert result.returncode in {128 + s for s in SIGNALS}, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert leftovers(tmp_path, dst) == [] and not dst.exists()
    assert sha256(src) == src_sha


# -- the mechanism, in this process -----------------------------------------------------------------


@pytest.fixture
def handlers_restored() -> Iterator[None]:
    before = {s: signal.getsignal(s) for s in SIGNALS}
    yield
    assert {s: signal.getsignal(s) for s in SIGNALS} == before


@pytest.mark.usefixtures("handlers_restored")
def test_a_signal_raises_interrupted_with_its_exit_code() -> None:
    with pytest.raises(Interrupted) as caught, stopping_cleanly():
        signal.raise_signal(signal.SIGTERM)
    assert (caught.value.signum, caught.value.exit_code, caught.value.name) == (signal.SIGTERM, 143, "SIGTERM")


@pytest.mark.usefixtures("handlers_restored")
def test_a_held_block_finishes_before_the_signal_takes_effect() -> None:
    steps = []
    with pytest.raises(Interrupted) as caught, stopping_cleanly():
        with held():
            signal.raise_signal(signal.SIGHUP)
            steps.append("after the signal")
            signal.raise_signal(signal.SIGTERM)  # the first one counts
            steps.append("end of block")
        steps.append("never")
    assert steps == ["after the signal", "end of block"]
    assert caught.value.signum == signal.SIGHUP


@pytest.mark.usefixtures("handlers_restored")
def test_the_signal_wins_over_an_error_in_a_held_block() -> None:
    with pytest.raises(Interrupted) as caught, stopping_cleanly(), held():
        signal.raise_signal(signal.SIGTERM)
        raise OSError("a cleanup step failed")
    assert isinstance(caught.value.__context__, OSError)


def test_an_ignored_signal_stays_ignored() -> None:
    # `nohup ckpttool ...` must survive its terminal closing.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stopping_cleanly():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            signal.raise_signal(signal.SIGHUP)  # nothing happens
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
