"""scan throughput against picklescan and modelscan on the same files, in one run.

The peer scanners are not dependencies of ckpttool: install them into a throwaway venv
and pass its path (`python -m venv /tmp/peers && /tmp/peers/bin/pip install picklescan
modelscan`, then `python bench/bench_scan.py /tmp/peers`). Run bench/make_checkpoints.py
first. Each tool runs as a whole process on a warm page cache; its verdict and exit code
are printed beside its time, so a fast wrong answer is visible.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ENV, OUT, ckpttool


def run(argv: list[str]) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS (MB), exit code and the last line of output of one run."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
    output = child.stdout.read().decode(errors="replace") if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return elapsed, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), (lines[-1] if lines else "")[:90]


def measure(argv: list[str], repeat: int = 3) -> tuple[float, float, int, str]:
    run(argv)  # warm-up: the file is in the page cache for every tool alike
    runs = [run(argv) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs), runs[-1][2], runs[-1][3]


def main() -> None:
    peers = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    tools = {"ckpttool scan": lambda p: ckpttool("scan", p)}
    if peers is not None and (peers / "bin" / "picklescan").exists():
        tools["picklescan"] = lambda p: [str(peers / "bin" / "picklescan"), "-p", p]
    if peers is not None and (peers / "bin" / "modelscan").exists():
        tools["modelscan"] = lambda p: [str(peers / "bin" / "modelscan"), "-p", p]
    if len(tools) == 1:
        print("picklescan/modelscan not found: pass the venv they are installed in")
    for name in ("big.pt", "many.pt"):
        path = OUT / name
        size = path.stat().st_size
        print(f"{name} ({size / 1e9:.2f} GB)")
        for tool, argv in tools.items():
            seconds, peak, code, last = measure(argv(str(path)))
            rate = size / 1e9 / seconds
            print(f"  {tool:14s} {seconds:7.3f} s  {rate:7.1f} GB/s  peak {peak:7.1f} MB  exit {code}  {last}")


if __name__ == "__main__":
    main()
