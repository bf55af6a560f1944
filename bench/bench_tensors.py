"""convert, remap and inspect --stats on the ~3 GB file, whole process, against the
scripts users write today. Run bench/make_checkpoints.py first.

- convert vs torch.load(mmap=True) + safetensors.torch.save_file: no slower, and peak
  memory that does not grow with the file;
- remap vs torch.load(map_location='cpu') + torch.save: >= 2x faster, memory not
  growing with the file;
- inspect --stats: memory bounded by the largest tensor (10 MB here) on top of what
  importing torch costs.
"""

from __future__ import annotations

from common import OUT, ckpttool, drop_file, measure, python, report

CONVERT_SCRIPT = """
import sys, torch
from safetensors.torch import save_file
state = torch.load(sys.argv[1], mmap=True, weights_only=True)
save_file(state, sys.argv[2])
"""
REMAP_SCRIPT = """
import sys, torch
torch.save(torch.load(sys.argv[1], map_location="cpu", weights_only=True), sys.argv[2])
"""
IMPORT_TORCH = "import torch"


def main() -> None:
    src = str(OUT / "big.pt")
    ours_st, base_st = OUT / "converted.safetensors", OUT / "baseline.safetensors"
    ours = measure(ckpttool("convert", src, str(ours_st), "--force"))
    baseline = measure(python(CONVERT_SCRIPT, src, str(base_st)))
    report("convert big.pt -> safetensors", ours, baseline, "no slower; memory not growing with the file")
    for path in (ours_st, base_st):
        drop_file(path)

    ours_pt, base_pt = OUT / "remapped.pt", OUT / "baseline_remapped.pt"
    ours = measure(ckpttool("remap", src, str(ours_pt), "--device", "cpu", "--force"))
    baseline = measure(python(REMAP_SCRIPT, src, str(base_pt)))
    report("remap big.pt --device cpu", ours, baseline, ">= 2x; memory not growing with the file")
    for path in (ours_pt, base_pt):
        drop_file(path)

    stats = measure(ckpttool("inspect", src, "--stats", "--format", "json"), repeat=1)
    torch_only = measure(python(IMPORT_TORCH))
    print("inspect --stats big.pt")
    print(f"  ckpttool  {stats.seconds:8.3f} s  peak {stats.peak_mb:8.1f} MB")
    print(f"  import torch alone      peak {torch_only.peak_mb:8.1f} MB")
    above = stats.peak_mb - torch_only.peak_mb
    print(f"  above torch's own       {above:8.1f} MB  (largest tensor: 10 MB; file: 3000 MB)")


if __name__ == "__main__":
    main()
