"""diff of a ~3 GB .pt against its .safetensors vs the script users write today (load
both, torch.equal each key), whole process.

Target: >= 1.5x faster, and peak memory under 1 GB where the script takes over 6 GB.
Run bench/make_checkpoints.py first.
"""

from __future__ import annotations

from common import OUT, ckpttool, measure, python, report

SCRIPT = """
import sys, torch
from safetensors.torch import load_file
a = torch.load(sys.argv[1], weights_only=True)
b = load_file(sys.argv[2])
different = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
print(len(different))
"""


def main() -> None:
    pt, st = str(OUT / "big.pt"), str(OUT / "big.safetensors")
    ours = measure(ckpttool("diff", pt, st, "--format", "json"))
    baseline = measure(python(SCRIPT, pt, st))
    report("diff big.pt big.safetensors", ours, baseline, ">= 1.5x; peak < 1 GB (script > 6 GB)")


if __name__ == "__main__":
    main()
