"""The processes a conversion is split across: one, or the ranks of a process group.

The caller says which (`ConvertOptions.ranks`; the command passes the ranks `torchrun`
started, `cli/torchrun.py`): every rank takes a share of the tensors, and the ranks agree
on success before anything lands. One process needs no process group at all (DCP runs
with `no_dist=True`).

Every step that can fail on one rank alone ends in `agree`, a collective all ranks reach
whatever happened, so a failure on one rank never leaves the others waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ckpttool.errors import CkptError
from ckpttool.ops.convert.targets import DCP

T = TypeVar("T")


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T], size: Callable[[T], int]) -> list[T]:
        """This rank's items: the largest first onto the least loaded rank (the same split on
        every rank), kept in their original order."""
        if not self.distributed:
            return list(items)
        loads = [0] * self.world
        owner = [0] * len(items)
        for i in sorted(range(len(items)), key=lambda i: -size(items[i])):
            target = loads.index(min(loads))
            owner[i] = target
            loads[target] += size(items[i])
        return [item for i, item in enumerate(items) if owner[i] == self.rank]

    def agree(self, ok: bool) -> bool:
        """True when every rank is ok."""
        if not self.distributed:
            return ok
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if ok else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def broadcast(self, value: Any) -> Any:
        """The leader's value, on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out


def split_across_ranks(src: str, to: str) -> bool:
    """Whether ranks can share this conversion: into DCP, or out of a DCP folder. Any other
    would have every rank write the same file."""
    from ckpttool.ops.convert.dcp.meta import is_dcp_folder

    return to == DCP or is_dcp_folder(src)


def together(ranks: Ranks, step: Callable[[], T]) -> T:
    """Run `step` on every rank; if it fails on any, every rank raises (its own error, or one
    naming the rank that failed)."""
    try:
        result = step()
    except BaseException:
        ranks.agree(False)
        raise
    if not ranks.agree(True):
        raise CkptError("another rank failed; see its message")
    return result
