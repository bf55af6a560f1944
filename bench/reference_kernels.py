"""How far the reference fixtures' numbers move when torch runs other CPU kernels.

    python bench/reference_kernels.py [fixtures/reference/cnn ...]

Runs `ckpttool reference check --exact` on each fixture folder under several
kernel choices (ATen's capability, oneDNN's and MKL's instruction sets, oneDNN
off), each in its own process, and prints the largest difference of logits and
losses from the recorded values. That measurement is what the tolerance of
`reference check` (`ckpttool/reference/compare.py`) is set against.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETS = [ROOT / "fixtures" / "reference" / "cnn", ROOT / "fixtures" / "reference" / "cnn_cuda0"]

# Each variant: environment settings that steer a kernel library to other code.
VARIANTS: dict[str, dict[str, str]] = {
    "as recorded": {},
    "ATen default": {"ATEN_CPU_CAPABILITY": "default"},
    "ATen avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "oneDNN avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "MKL avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "all avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "all default": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    },
}
# "by up to 3.81e-06" (logits), "expected 0.123, got 0.123 (differs by 1e-07)" (losses)
DIFFERENCE = re.compile(r"(?:by up to|differs by) ([0-9.e+-]+|inf|nan)")


def largest_difference(directory: Path, environment: dict[str, str]) -> tuple[float, int]:
    """The largest difference any check reports, and how many checks were not bit-exact."""
    command = [sys.executable, "-m", "ckpttool", "reference", "check", str(directory), "--exact"]
    command += ["--resume-epochs", "0", "--format", "json"]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **environment})
    report = json.loads(completed.stdout)
    largest, failed = 0.0, 0
    for failure in report["failures"]:
        failed += 1
        for match in DIFFERENCE.finditer(failure["detail"]):
            largest = max(largest, float(match.group(1)))
    return largest, failed


def main(argv: list[str]) -> int:
    directories = [Path(arg) for arg in argv] or DEFAULT_SETS
    print(f"{'fixture set':<14} {'kernels':<14} {'checks not bit-exact':>20} {'largest difference':>19}")
    for directory in directories:
        for name, environment in VARIANTS.items():
            largest, failed = largest_difference(directory, environment)
            print(f"{directory.name:<14} {name:<14} {failed:>20} {largest:>19.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
