"""Whole-process measurements: wall time and the peak RSS of exactly that process."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
BIN = Path(sys.executable).parent


@dataclass
class Measurement:
    seconds: float
    peak_mb: float
    cpu_seconds: float = 0.0  # user + system: what a busy machine's wall time hides


# A pip install compiles every module to bytecode, as torch's were; measure ckpttool the same
# way even where the environment asks Python not to write .pyc files.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "ckpttool")], check=True, env=ENV)


def install_mode() -> str:
    site = Path(sys.executable).parent.parent / "lib"
    editable = any(site.glob("python3*/site-packages/__editable__*ckpttool*"))
    return "editable (its import finder adds ~10 ms per start)" if editable else "regular"


print(f"ckpttool install: {install_mode()}")


def measure(argv: list[str], repeat: int = 3) -> Measurement:
    """Median wall time and largest peak RSS over `repeat` runs of `argv`, after one warm-up
    run (so every tool reads the file from the page cache)."""
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    runs = [run_once(argv) for _ in range(repeat)]
    return Measurement(statistics.median(r.seconds for r in runs), max(r.peak_mb for r in runs))


def run_once(argv: list[str]) -> Measurement:
    """Wall time and peak RSS of one run of `argv` (exit 0 or 1 expected)."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv)} failed ({child.returncode}): {child.stderr.read().decode()}")
    return Measurement(elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)


def ckpttool(*args: str) -> list[str]:
    return [str(BIN / "ckpttool"), *args]


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


def report(title: str, ours: Measurement, baseline: Measurement, target: str) -> None:
    ratio = baseline.seconds / ours.seconds
    print(f"{title}")
    print(f"  ckpttool  {ours.seconds:8.3f} s  peak {ours.peak_mb:8.1f} MB")
    print(f"  baseline  {baseline.seconds:8.3f} s  peak {baseline.peak_mb:8.1f} MB")
    print(f"  speed-up  {ratio:8.1f}x   (target: {target})")


def drop_file(path: Path) -> None:
    if path.exists():
        path.unlink()
