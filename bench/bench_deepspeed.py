"""DeepSpeed ZeRO-3: `convert` against DeepSpeed's `zero_to_fp32.py` on the same folder.

`python bench/bench_deepspeed.py --deepspeed-python /path/to/venv/bin/python
[--gb 6] [--dir /tmp/ckpttool-ds-bench]` writes a ZeRO-3 run folder of 2 ranks, LLM-shaped,
of at least --gb GB (fp32 master partitions and Adam's two moments: the consolidated model
is a third of it), with `torch.save` in DeepSpeed's layout (`zero3_layout`, checked against
a folder DeepSpeed wrote by tests/formats/test_deepspeed.py). It copies DeepSpeed's
`zero_to_fp32.py` beside it, as `save_checkpoint` does, then measures in one run, each as a
whole process (wall time, peak RSS):

- `ckpttool convert RUN out/model.safetensors --shard-size 2GB` (streamed, verified);
- `python RUN/zero_to_fp32.py RUN out --safe_serialization --max_shard_size 2GB`, run by
  the Python that has DeepSpeed and huggingface_hub (the script imports both when sharding).

Everything is written under --dir and deleted at the end; it needs about 2x the folder's
size free on disk.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import torch

HIDDEN, FFN, VOCAB = 4096, 11008, 32000
BYTES_PER_ELEMENT = 12  # fp32 master, exp_avg, exp_avg_sq


def spec(gb: float) -> list[tuple[str, torch.Size]]:
    """An LLM's parameters, layer after layer, until the folder holds at least `gb` GB."""
    params = [("embed_tokens.weight", torch.Size([VOCAB, HIDDEN]))]
    layer = 0
    while sum(s.numel() for _, s in params) * BYTES_PER_ELEMENT < gb * 1e9:
        prefix = f"layers.{layer}."
        params += [(f"{prefix}self_attn.{n}.weight", torch.Size([HIDDEN, HIDDEN])) for n in "qkvo"]
        params += [
            (f"{prefix}mlp.up.weight", torch.Size([FFN, HIDDEN])),
            (f"{prefix}mlp.down.weight", torch.Size([HIDDEN, FFN])),
        ]
        params += [(f"{prefix}norm.weight", torch.Size([HIDDEN]))]
        layer += 1
    return params


def value(name: str, numel: int) -> torch.Tensor:
    """A parameter's values: cheap to make, different for every element and parameter."""
    seed = sum(map(ord, name)) % 997
    return torch.arange(numel, dtype=torch.float32).mul_(1e-9).add_(seed * 1e-3)


def show(title: str, m: object) -> None:
    print(f"  {title:66s} {m.seconds:8.1f} s  peak {m.peak_mb:8.0f} MB  (CPU {m.cpu_seconds:.1f} s)", flush=True)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=6.0)
    parser.add_argument("--dir", default="/tmp/ckpttool-ds-bench")
    parser.add_argument("--deepspeed-python", required=True, help="a Python that imports deepspeed")
    parser.add_argument("--write-only", help=argparse.SUPPRESS)  # the folder, written in a process of its own
    args = parser.parse_args()
    if args.write_only:
        write(Path(args.write_only), args.gb)
        return
    base = Path(args.dir)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    try:
        run(base, args.gb, args.deepspeed_python)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def write(ckpt: Path, gb: float) -> None:
    from zero3_layout import write_zero3

    params = spec(gb)
    shapes = dict(params)
    write_zero3(str(ckpt), params, 2, lambda name: value(name, shapes[name].numel()))


def run(base: Path, gb: float, ds_python: str) -> None:
    # A child's peak RSS counts the parent's at fork: the folder is written by another process.
    from common import ckpttool, run_once

    params = spec(gb)
    ckpt = base / "run"
    subprocess.run([sys.executable, __file__, "--gb", str(gb), "--deepspeed-python", ds_python,
                    "--write-only", str(ckpt)], check=True)  # fmt: skip
    script = subprocess.run(
        [ds_python, "-c", "import deepspeed.utils.zero_to_fp32 as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[-1]  # after whatever DeepSpeed logs on import
    shutil.copy(script, ckpt / "zero_to_fp32.py")
    size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    largest = max(s.numel() for _, s in params) * 4
    numel = sum(s.numel() for _, s in params)
    print(
        f"ZeRO-3 folder: {size / 1e9:.2f} GB, 2 ranks, {len(params)} parameters, {numel * 4 / 1e9:.2f} GB of fp32 "
        f"weights, largest parameter {largest / 1e6:.0f} MB; {sys.argv}"
    )
    out = base / "out"
    out.mkdir()
    ours = run_once(ckpttool("convert", str(ckpt), str(out / "model.safetensors"), "--shard-size", "2GB"))
    show("ckpttool convert --shard-size 2GB (verified)", ours)
    shutil.rmtree(out)
    out.mkdir()
    theirs = run_once([ds_python, str(ckpt / "zero_to_fp32.py"), str(ckpt), str(out), "--safe_serialization",
                       "--max_shard_size", "2GB"])  # fmt: skip
    show("zero_to_fp32.py --safe_serialization --max_shard_size 2GB", theirs)
    if not list(out.glob("*.safetensors")):  # it exits 1 on a Python error, which run_once accepts
        raise SystemExit("zero_to_fp32.py wrote nothing (does its Python have deepspeed and huggingface_hub?)")
    print(
        f"  time {ours.seconds / theirs.seconds:.2f}x zero_to_fp32.py's, peak memory "
        f"{ours.peak_mb / theirs.peak_mb:.2f}x (goal: <= 0.7x, <= 0.25x)"
    )
    shutil.rmtree(out)


if __name__ == "__main__":
    main()
