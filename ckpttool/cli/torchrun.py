"""The command under `torchrun`: the ranks it describes, and how every rank ends.

Under `torchrun` (RANK and WORLD_SIZE in the environment) the default process group is
set up on gloo, so the same command runs on CPU-only machines. Only the command reads
the environment or sets a group up; the library is handed the ranks (`ConvertOptions.ranks`),
so a program already running under torchrun calls it as it is.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from typing import TYPE_CHECKING

from ckpttool.errors import UsageError

if TYPE_CHECKING:  # every command ends through `leave`; only convert asks for its ranks
    from ckpttool.ops.convert import Ranks

CLOSE_TIMEOUT = 60

_set_up_here: list[bool] = []  # whether this process's group is the one `torchrun_ranks` set up


def torchrun_world() -> int:
    """How many processes torchrun started: WORLD_SIZE, 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def torchrun_ranks() -> Ranks:
    """One process, or this rank of the group torchrun describes (set up here on gloo)."""
    from ckpttool.ops.convert import Ranks

    if torchrun_world() <= 1:
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


def joined() -> bool:
    """Whether this process is in the group `torchrun_ranks` set up (a group the caller set
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
