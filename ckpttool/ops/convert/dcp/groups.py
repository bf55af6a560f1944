"""What converting into and out of DCP share: bounded groups of tensors, and each DCP call
made quiet and safe to stop."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ckpttool.ops.convert.dcp.meta import safe_reader
from ckpttool.signals import held
from ckpttool.tensordata import torch_dtype

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import Metadata

GROUP_BYTES = 256 << 20  # tensors loaded per dcp.load call; a larger tensor goes alone
T = TypeVar("T")


def groups(items: Sequence[T], size: Callable[[T], int], limit: int = GROUP_BYTES) -> Iterator[list[T]]:
    group: list[T] = []
    total = 0
    for item in items:
        if group and total + size(item) > limit:
            yield group
            group, total = [], 0
        group.append(item)
        total += size(item)
    if group:
        yield group


@contextlib.contextmanager
def inside_dcp() -> Iterator[None]:
    """Around every DCP call. A stop signal's exception raised inside DCP would come out
    as DCP's or torch's own error (its zip writer swallows it), so signals are held until
    the call returns; a save checks `stop_pending` between tensors to end early. DCP also
    warns that it runs without a process group, which is what one process means here."""
    with held(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class Stopped(Exception):
    """Ends a DCP save early for a held stop signal, which `held()` then raises."""


def load_group(folder: str, metadata: Metadata, wanted: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, Any]:
    """{fqn: tensor} for the wanted tensors (dtype, global shape), filled by DCP's own reader
    and planner on this process alone; chunks are resharded into the whole tensor by DCP."""
    import torch
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import load

    state = {fqn: torch.empty(shape, dtype=torch_dtype(dtype)) for fqn, (dtype, shape) in wanted.items()}
    with inside_dcp():
        load(
            state,
            storage_reader=safe_reader(folder, metadata),
            planner=DefaultLoadPlanner(allow_partial_load=True),
            no_dist=True,
        )
    return state
