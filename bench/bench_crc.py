"""What checking zip records' CRC-32 costs `convert`: the same 1 GB file converted with
the check and with it switched off, alternating, in one process (warm page cache).

    .venv/bin/python bench/bench_crc.py [--size-gb 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

import ckpttool.tensordata as tensordata
from ckpttool.ops.convert import ConvertOptions, convert


def make_source(folder: Path, size_gb: float) -> Path:
    rows = 4096
    count = max(1, round(size_gb * 2**30 / (rows * rows * 4)))  # 64 MiB float32 tensors
    generator = torch.Generator().manual_seed(0)
    path = folder / "big.pt"
    torch.save({f"layer{i}.weight": torch.randn(rows, rows, generator=generator) for i in range(count)}, path)
    return path


def timed(src: Path, dst: Path, to: str, checked: bool) -> tuple[float, float]:
    """Wall-clock and CPU seconds (CPU time is what the check adds; wall time is noisy on a
    shared machine)."""
    if dst.exists():
        dst.unlink()
    started, cpu = time.perf_counter(), time.process_time()
    if checked:
        convert(str(src), str(dst), ConvertOptions(to=to))
    else:
        with mock.patch.object(tensordata, "_unchecked", lambda record: False):
            convert(str(src), str(dst), ConvertOptions(to=to))
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as folder:
        src = make_source(Path(folder), args.size_gb)
        print(f"source: {src.stat().st_size / 1e9:.2f} GB")
        for to, name in (("safetensors", "out.safetensors"), ("pth", "out.pt")):
            dst = Path(folder) / name
            timed(src, dst, to, True)  # warm the page cache and imports
            runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for _ in range(args.rounds):
                for checked in (False, True):
                    runs[checked].append(timed(src, dst, to, checked))
            for label, index in (("wall", 0), ("cpu", 1)):
                without = statistics.median(r[index] for r in runs[False])
                with_ = statistics.median(r[index] for r in runs[True])
                print(
                    f"convert --to {to} ({label}): {without:.2f} s without the CRC check, {with_:.2f} s with it "
                    f"({with_ - without:+.2f} s, {100 * (with_ / without - 1):+.0f}%; median of {args.rounds})"
                )


if __name__ == "__main__":
    main()
