"""inspect --format json vs a torch.load(mmap=True, weights_only=True) script, whole process.

Targets: >= 20x faster on the ~3 GB file, peak memory under 100 MB, and
`ckpttool --help` under 0.3 s. Run bench/make_checkpoints.py first.
"""

from __future__ import annotations

from common import OUT, ckpttool, measure, python, report

TORCH_SCRIPT = """
import sys, torch
state = torch.load(sys.argv[1], mmap=True, weights_only=True)
print(len(state), sum(t.numel() for t in state.values()))
"""


def main() -> None:
    for name in ("big.pt", "many.pt"):
        path = str(OUT / name)
        ours = measure(ckpttool("inspect", path, "--format", "json"))
        baseline = measure(python(TORCH_SCRIPT, path))
        report(f"inspect {name}", ours, baseline, ">= 20x on big.pt; peak < 100 MB")
    help_run = measure(ckpttool("--help"), repeat=5)
    print(f"ckpttool --help  {help_run.seconds:.3f} s  peak {help_run.peak_mb:.1f} MB  (target < 0.3 s)")


if __name__ == "__main__":
    main()
