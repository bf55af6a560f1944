"""The processes a conversion is split across: one, or the ranks `torchrun` started.

Under `torchrun` (RANK and WORLD_SIZE in the environment) the default process group is
set up on gloo, so the same command runs on CPU-only machines; every rank takes a share
of the tensors, and the ranks agree on success before anything lands. One process needs
no process group at all (DCP runs with `no_dist=True`).

Every step that can fail on one rank alone ends in `agree`, a collective all ranks reach
whatever happened, so a failure on one rank never leaves the others waiting.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ckpttool.errors import CkptError, UsageError

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


def current_ranks() -> Ranks:
    """One process, or this rank of the group torchrun describes (set up here on gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks()
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise UsageError("WORLD_SIZE is set without RANK and MASTER_ADDR; run under torchrun")
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
        _set_up_here.append(True)
        atexit.register(_close_group)
    return Ranks(dist.get_rank(), dist.get_world_size())


def _close_group() -> None:
    """Tear the group down while Python still runs: gloo's threads left to the C++ runtime's
    exit abort the process ("terminate called without an active exception"). The barrier
    keeps one rank from closing its connections while another still reads from them; it
    gives up on a rank that is gone after `CLOSE_TIMEOUT` (a failure is never a hang)."""
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        dist.monitored_barrier(timeout=timedelta(seconds=CLOSE_TIMEOUT))
    except RuntimeError:
        pass  # a rank already gone: nothing left to wait for
    finally:
        dist.destroy_process_group()


CLOSE_TIMEOUT = 60


_set_up_here: list[bool] = []  # whether this process's group is the one `current_ranks` set up


def joined() -> bool:
    """Whether this process is in the group `current_ranks` set up (a group the caller set
    up is the caller's to end; torch is never imported to find out)."""
    distributed = sys.modules.get("torch.distributed")
    return bool(_set_up_here) and distributed is not None and distributed.is_initialized()


def leave(code: int) -> None:
    """The end of a process that joined a torchrun group, whatever the exit code: every rank
    meets the others at a barrier, the group is destroyed, and the process ends here, its
    output flushed, without running the C++ runtime's exit, where threads gloo started
    (and torch never joins) abort the process now and then. Does nothing elsewhere."""
    if not joined():
        return
    _close_group()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe has nothing left to flush
            stream.flush()
    os._exit(code)


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
