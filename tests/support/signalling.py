"""Running ckpttool in a child process and stopping it with a signal at a chosen moment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence


def signal_when(
    args: list[str],
    ready: Callable[[], bool],
    sig: int | Sequence[int],
    extra_env: dict[str, str] | None = None,
    poll: float = 0.0005,
) -> subprocess.CompletedProcess[str] | None:
    """Run `python -m ckpttool ARGS`; send `sig` (or each of several, at once) as soon
    as `ready()` holds.

    Returns what the child did after the signal, or None when it ended before
    `ready()` held (the caller may try again)."""
    command = [sys.executable, "-m", "ckpttool", *args]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(extra_env or {})}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while not ready():
            if child.poll() is not None:
                child.communicate()
                return None
            time.sleep(poll)
        for each in [sig] if isinstance(sig, int) else sig:
            child.send_signal(each)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    return subprocess.CompletedProcess(command, child.returncode, stdout, stderr)
