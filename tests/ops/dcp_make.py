"""Writes a real DCP checkpoint from WORLD processes on gloo: `python dcp_make.py OUT WORLD`.

Rank by rank as training code does: a model sharded with FSDP2's `fully_shard` (uneven
shards: 5 rows over 2 ranks), a replicated DTensor, a plain tensor, Adam state taken with
`get_state_dict`, and non-tensor entries (an int, a string, a dict).
"""

from __future__ import annotations

import os
import socket
import sys
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn


def _worker(rank: int, world: int, out: str, port: int) -> None:
    warnings.simplefilter("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, distribute_tensor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3, bias=False))
    mesh = init_device_mesh("cpu", (world,))
    fully_shard(model, mesh=mesh)
    optim = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 7)).sum().backward()
    optim.step()
    model_sd, optim_sd = get_state_dict(model, optim)
    state = {
        "model": model_sd,
        "optim": optim_sd,
        "extra": {
            "replicated": distribute_tensor(torch.arange(12.0).reshape(3, 4), mesh, [Replicate()]),
            "plain": torch.arange(6, dtype=torch.int32),
            "half": torch.linspace(0, 1, 9).to(torch.bfloat16),
        },
        "epoch": 3,
        "note": "hello",
        "config": {"lr": 0.01, "layers": [7, 5, 3]},
    }
    dcp.save(state, checkpoint_id=out)
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    out, world = sys.argv[1], int(sys.argv[2])
    mp.spawn(_worker, args=(world, out, free_port()), nprocs=world, join=True)
