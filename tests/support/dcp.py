"""Real distributed checkpoints, written by `torch.distributed.checkpoint.save` on gloo: the
one DCP writer of the tests (the session fixtures `dcp_world1` and `dcp_world2` of
tests/conftest.py are its folders).

`save(out, world)` in the calling process (world size 1, a process group of its own on
an in-memory store); `python dcp.py OUT WORLD` spawns WORLD ranks on 127.0.0.1.
Every rank builds the same state, as training code does:
- `model`: DTensors on a CPU mesh: a weight split by rows (`Shard(0)`, 5 rows over 2
  ranks: uneven), one split by columns (`Shard(1)`: chunks that are no byte range of
  the whole), replicated biases;
- `optimizer`: a plain Adam state_dict (parameter indices as keys), its `exp_avg` of the
  row-split weight split the same way;
- `fsdp`: a model sharded with FSDP2's `fully_shard` and its Adam state taken with
  `get_state_dict` (parameter names as keys: `fsdp.optim.state.0.weight.exp_avg`);
- `extra`: a bfloat16 tensor split by rows, an int32 tensor, a 0-d tensor;
- non-tensor entries: `epoch` (int), `config` (a dict with a list), `note` (str).
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn


def _state(world: int) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    adam = torch.optim.Adam(net.parameters(), lr=0.01)
    net(torch.randn(4, 6)).sum().backward()
    adam.step()
    placements = {"0.weight": Shard(0), "0.bias": Replicate(), "2.weight": Shard(1), "2.bias": Replicate()}
    model = {k: distribute_tensor(v.detach(), mesh, [placements[k]]) for k, v in net.state_dict().items()}
    optimizer = adam.state_dict()
    optimizer["state"][0]["exp_avg"] = distribute_tensor(optimizer["state"][0]["exp_avg"], mesh, [Shard(0)])

    torch.manual_seed(1)
    sharded = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3, bias=False))
    fully_shard(sharded, mesh=mesh)
    fsdp_adam = torch.optim.Adam(sharded.parameters(), lr=0.02)
    sharded(torch.randn(4, 7)).sum().backward()
    fsdp_adam.step()
    fsdp_model, fsdp_optim = get_state_dict(sharded, fsdp_adam)
    extra = {
        "half": distribute_tensor(torch.linspace(0, 1, 15).reshape(5, 3).to(torch.bfloat16), mesh, [Shard(0)]),
        "ints": torch.arange(6, dtype=torch.int32),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
    }
    return {
        "model": model,
        "optimizer": optimizer,
        "fsdp": {"model": fsdp_model, "optim": fsdp_optim},
        "extra": extra,
        "epoch": 3,
        "config": {"lr": 0.01, "layers": [6, 5, 3], "name": "run"},
        "note": "hello",
    }


def save(out: str, world: int = 1) -> None:
    """World size 1, here: a gloo process group on an in-memory store, torn down after."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        try:
            dcp.save(_state(world), checkpoint_id=out)
        finally:
            dist.destroy_process_group()


def _rank(rank: int, world: int, out: str, port: int) -> None:
    warnings.simplefilter("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dcp.save(_state(world), checkpoint_id=out)
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    import torch.multiprocessing as mp

    folder, ranks = sys.argv[1], int(sys.argv[2])
    mp.spawn(_rank, args=(ranks, folder, free_port()), nprocs=ranks, join=True)
