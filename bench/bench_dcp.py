"""DCP checkpoints: `inspect`, and `convert` to sharded safetensors, against today's scripts.

`python bench/bench_dcp.py [--gb 6] [--dir /tmp/ckpttool-dcp-bench]` writes an LLM-shaped
float32 state_dict with `torch.distributed.checkpoint` from 2 ranks on gloo (every matrix
sharded by rows across the ranks as FSDP does, norms replicated), then measures in one run,
each as a whole process (wall time, peak RSS):

- `ckpttool inspect DIR --format json` against `dcp_to_torch_save` + `torch.load(mmap=True)`
  (the only way torch offers to list a DCP checkpoint's tensors is to load it);
- `ckpttool convert DIR out/model.safetensors --shard-size 2GB` against the script people
  use today: `dcp_to_torch_save`, then `torch.load` + `save_file` per 2 GB shard + index;
- torch's own safetensors consolidation (`_consolidate_hf_safetensors`) where it applies:
  on the same tensors saved by the same 2 ranks through `HuggingFaceStorageWriter`
  (it reads only checkpoints written in that layout, not `.distcp` files).

It ends with the DCP row of the performance table: ckpttool's convert time as a share of
the script's and of torch's consolidation (goals: at most 0.6 and 1.0), and its peak RSS
against the budget of twice the largest tensor plus 300 MB. The checkpoints are written by
child processes, so that this process stays small: a child's peak RSS counts its parent's
at the fork, and each tool's peak is then its own.

Everything is written under --dir and deleted at the end; it needs about 3x the
checkpoint size free on disk.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

HIDDEN = 4096
LAYER_BYTES = (4 * HIDDEN * HIDDEN + 2 * 5504 * HIDDEN + HIDDEN) * 4


def _layers(gb: float) -> int:
    return max(1, math.ceil((gb * 1e9 - 32000 * HIDDEN * 4) / LAYER_BYTES))  # at least gb


def _spec(layers: int) -> list[tuple[str, int, int, bool]]:
    """(key, rows, cols, sharded) of an LLM-shaped model."""
    spec = [("tok_embeddings.weight", 32000, HIDDEN, True)]
    for layer in range(layers):
        prefix = f"layers.{layer}."
        spec += [(f"{prefix}attention.{n}.weight", HIDDEN, HIDDEN, True) for n in ("wq", "wk", "wv", "wo")]
        spec += [(f"{prefix}feed_forward.w1.weight", 5504, HIDDEN, True)]
        spec += [(f"{prefix}feed_forward.w2.weight", HIDDEN, 5504, True)]
        spec += [(f"{prefix}attention_norm.weight", 1, HIDDEN, False)]
    return spec


def _state(rank: int, world: int, layers: int, mesh: Any) -> dict[str, Any]:
    """Each rank's share of the state_dict, as DTensors (Shard(0) matrices, replicated norms)."""
    import torch
    from torch.distributed.tensor import DTensor, Replicate, Shard

    state: dict[str, Any] = {}
    for seed, (key, rows, cols, sharded) in enumerate(_spec(layers)):
        local = torch.empty(rows // world if sharded else rows, cols).fill_(seed * 0.001 + rank * sharded)
        local[:, 0] = torch.arange(local.shape[0], dtype=torch.float32)  # no two rows alike
        placement = Shard(0) if sharded else Replicate()
        state[key] = DTensor.from_local(local, mesh, [placement], run_check=False)
    return state


def _writer(rank: int, world: int, port: int, layers: int, folder: str, hf: bool) -> None:
    warnings.simplefilter("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", rank=rank, world_size=world)
    state = _state(rank, world, layers, init_device_mesh("cpu", (world,)))
    if hf:
        from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter

        dcp.save({"model": state}, storage_writer=HuggingFaceStorageWriter(folder, save_distributed=True))
    else:
        dcp.save({"model": state}, checkpoint_id=folder)
    dist.barrier()
    dist.destroy_process_group()


def write_checkpoint(folder: Path, layers: int, hf: bool = False) -> None:
    """The checkpoint, written by 2 ranks spawned from a child process of this one."""
    args = ["--write", str(folder), "--layers", str(layers), *(["--hf"] if hf else [])]
    subprocess.run([sys.executable, __file__, *args], check=True)


def _spawn_writers(folder: Path, layers: int, hf: bool) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_writer, args=(2, port, layers, str(folder), hf), nprocs=2, join=True)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


INSPECT_SCRIPT = """
import sys, warnings, torch
warnings.simplefilter("ignore")
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
dcp_to_torch_save(sys.argv[1], sys.argv[2])
state = torch.load(sys.argv[2], mmap=True, weights_only=False)
print(len(state["model"]), sum(t.numel() for t in state["model"].values()))
"""

CONVERT_SCRIPT = """
import json, os, sys, warnings, torch
warnings.simplefilter("ignore")
from safetensors.torch import save_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
dcp_to_torch_save(sys.argv[1], sys.argv[2])
state = torch.load(sys.argv[2], weights_only=False)["model"]
limit, shards, size = 2 * 10**9, [{}], 0
for key, value in state.items():
    if shards[-1] and size + value.nbytes > limit:
        shards.append({}); size = 0
    shards[-1][key] = value; size += value.nbytes
names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
for name, shard in zip(names, shards):
    save_file(shard, os.path.join(sys.argv[3], name), metadata={"format": "pt"})
weight_map = {k: n for n, s in zip(names, shards) for k in s}
with open(os.path.join(sys.argv[3], "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
"""

CONSOLIDATE_SCRIPT = """
import json, sys, warnings
warnings.simplefilter("ignore")
from torch.distributed.checkpoint._consolidate_hf_safetensors import consolidate_safetensors_files
mapping = json.loads(sys.argv[3])
consolidate_safetensors_files(sys.argv[1], sys.argv[2], mapping)
"""


def show(title: str, m: Any) -> None:
    print(f"  {title:58s} {m.seconds:8.1f} s  peak {m.peak_mb:8.0f} MB  (CPU {m.cpu_seconds:.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=6.0)
    parser.add_argument("--dir", default="/tmp/ckpttool-dcp-bench")
    parser.add_argument("--write", help=argparse.SUPPRESS)  # the child that writes a checkpoint
    parser.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hf", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        _spawn_writers(Path(args.write), args.layers, args.hf)
        return
    base = Path(args.dir)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    try:
        run(base, _layers(args.gb))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(base: Path, layers: int) -> None:
    # Imported here, not at the top: the spawned writers import this module and need none of it.
    from common import ckpttool, python, run_once

    ckpt, out = base / "dcp", base / "out"
    write_checkpoint(ckpt, layers)
    files = len(list(ckpt.iterdir()))
    print(f"DCP checkpoint: {_size(ckpt) / 1e9:.2f} GB in {files} files, 2 ranks, {sys.argv}; load {os.getloadavg()}")
    show("ckpttool inspect --format json", run_once(ckpttool("inspect", str(ckpt), "--format", "json")))
    show("dcp_to_torch_save + torch.load(mmap=True)", run_once(python(INSPECT_SCRIPT, str(ckpt), str(base / "t.pt"))))
    (base / "t.pt").unlink()
    out.mkdir()
    convert = ckpttool("convert", str(ckpt), str(out / "model.safetensors"), "--shard-size", "2GB")
    ours = run_once(convert)
    show("ckpttool convert --shard-size 2GB (verified)", ours)
    shutil.rmtree(out)
    out.mkdir()
    baseline = python(CONVERT_SCRIPT, str(ckpt), str(base / "t.pt"), str(out))
    script = run_once(baseline)
    show("dcp_to_torch_save + torch.load + save_file per 2 GB", script)
    shutil.rmtree(out)
    (base / "t.pt").unlink()
    shutil.rmtree(ckpt)
    hf = base / "hf"
    write_checkpoint(hf, layers, hf=True)
    mapping = json.dumps(_one_file_per_2gb(layers))
    out.mkdir()
    consolidate = python(CONSOLIDATE_SCRIPT, str(hf), str(out), mapping)
    torchs = run_once(consolidate)
    show("torch _consolidate_hf_safetensors (HF layout, unverified)", torchs)
    budget = 2 * max(rows * cols * 4 for _, rows, cols, _ in _spec(layers)) / 2**20 + 300
    print(
        f"DCP row: convert takes {ours.seconds / script.seconds:.2f} of the script (goal <= 0.6) and "
        f"{ours.seconds / torchs.seconds:.2f} of torch's consolidation (goal <= 1.0); peak {ours.peak_mb:.0f} MB "
        f"(goal <= {budget:.0f} MB: 2 x the largest tensor + 300 MB); load average {os.getloadavg()[0]:.1f}"
    )


def _one_file_per_2gb(layers: int) -> dict[str, int]:
    """fqn -> output file index (1..N), at most 2 GB per file, as consolidation takes it."""
    mapping, file, used = {}, 1, 0
    for key, rows, cols, _ in _spec(layers):
        size = rows * cols * 4
        if used and used + size > 2 * 10**9:
            file, used = file + 1, 0
        mapping[f"model.{key}"] = file
        used += size
    return mapping


if __name__ == "__main__":
    main()
