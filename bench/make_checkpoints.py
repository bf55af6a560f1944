"""Build the benchmark checkpoints in bench/out/ (about 6 GB of disk).

- big.pt / big.safetensors: ~3 GB, 300 float32 tensors of 10 MB (the same tensors);
- many.pt: 50,000 small tensors (4x4 float32).
"""

from __future__ import annotations

import sys

import torch
from common import OUT
from safetensors.torch import save_file

BIG_TENSORS, BIG_ELEMENTS = 300, 2_500_000
MANY_TENSORS = 50_000


def main() -> None:
    OUT.mkdir(exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    if not (OUT / "big.pt").exists() or "--force" in sys.argv:
        big = {f"layers.{i}.weight": torch.randn(BIG_ELEMENTS, generator=generator) for i in range(BIG_TENSORS)}
        torch.save(big, OUT / "big.pt")
        save_file(big, OUT / "big.safetensors")
        del big
    if not (OUT / "many.pt").exists() or "--force" in sys.argv:
        many = {f"blocks.{i}.weight": torch.randn(4, 4, generator=generator) for i in range(MANY_TENSORS)}
        torch.save(many, OUT / "many.pt")
    for path in sorted(OUT.glob("*")):
        print(f"{path.name:24s} {path.stat().st_size / 1e9:6.2f} GB")


if __name__ == "__main__":
    main()
