"""A ZeRO-3 checkpoint folder written with `torch.save` alone, laid out as DeepSpeed lays
it out (tests/formats/test_deepspeed.py compares it with a folder DeepSpeed wrote): for a
model too big to train here, a folder both ckpttool and DeepSpeed's `zero_to_fp32.py` read.

Each rank r holds, for every parameter in order, `ceil(numel / world)` elements (the
last rank's share padded with zeros) of the fp32 master in one flat group per sub-group,
and the same for Adam's `exp_avg` and `exp_avg_sq`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch

TAG = "global_step2"
DS_VERSION = "0.19.8"
Params = list[tuple[str, torch.Size]]


def shares(params: Params, world: int) -> Iterator[tuple[str, int, int]]:
    """(name, numel, elements per rank) of each parameter, in order."""
    for name, shape in params:
        numel = shape.numel()
        yield name, numel, -(-numel // world)


def rank_flat(params: Params, world: int, rank: int, value: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Rank `rank`'s partition of every parameter, one after another; `value(name)` is the
    parameter's full flat fp32 value (called once per parameter)."""
    total = sum(share for _, _, share in shares(params, world))
    flat = torch.zeros(total, dtype=torch.float32)
    offset = 0
    for name, numel, share in shares(params, world):
        part = value(name)[rank * share : min(numel, (rank + 1) * share)]
        flat[offset : offset + part.numel()] = part
        offset += share
    return flat


def write_zero3(
    run: str,
    params: Params,
    world: int,
    master: Callable[[str], torch.Tensor],
    buffers: dict[str, torch.Tensor] | None = None,
    moments: Callable[[str, str], torch.Tensor] | None = None,
) -> None:
    """The run folder `run` (`latest`, `TAG/`) of a ZeRO-3 fp32 Adam run with one flat group;
    `moments(key, name)` is a parameter's full flat `exp_avg`/`exp_avg_sq` (its master's
    values when not given)."""
    moment = moments or (lambda key, name: master(name))
    folder = os.path.join(run, TAG)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(run, "latest"), "w") as f:
        f.write(TAG)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    for rank in range(world):
        flat = rank_flat(params, world, rank, master)
        state: dict[str, Any] = {"step": torch.tensor(2.0)}
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = rank_flat(params, world, rank, partial(moment, key))
        optim = {
            "zero_stage": 3,
            "loss_scaler": None,
            "dynamic_loss_scale": False,
            "overflow": False,
            "partition_count": world,
            "optimizer_state_dict": {"state": {0: state}, "param_groups": [_group()]},
            "fp32_flat_groups": [flat],
        }
        torch.save(
            {"optimizer_state_dict": optim, "ds_config": config, "ds_version": DS_VERSION},
            os.path.join(folder, f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"),
        )
        del flat, state, optim
        torch.save(_model_states(params, world, buffers or {}, config), _model_path(folder, rank))


def _model_path(folder: str, rank: int) -> str:
    return os.path.join(folder, f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")


def _group() -> dict[str, Any]:
    return {
        "lr": 0.05,
        "betas": (0.9, 0.999),
        "eps": 1e-08,
        "weight_decay": 0,
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "fused": None,
        "decoupled_weight_decay": False,
        "params": [0],
    }


def _model_states(
    params: Params, world: int, buffers: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, Any]:
    module = dict(buffers)  # ZeRO-3 saves buffers whole, then each parameter as an empty placeholder
    module.update((name, torch.empty(0)) for name, _ in params)
    return {
        "module": module,
        "buffer_names": list(buffers),
        "optimizer": None,
        "param_shapes": [OrderedDict(params)],
        "frozen_param_shapes": OrderedDict(),
        "shared_params": {},
        "frozen_param_fragments": OrderedDict(),
        "lr_scheduler": None,
        "data_sampler": None,
        "random_ltd": None,
        "skipped_steps": 0,
        "global_steps": 2,
        "global_samples": 2 * world,
        "dp_world_size": world,
        "mp_world_size": 1,
        "checkpoint_parallel_dimensions": {"pp_degree": 1, "tp_degree": 1},
        "ds_config": config,
        "ds_version": DS_VERSION,
    }
