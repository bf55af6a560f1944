"""Stopping cleanly on SIGINT, SIGTERM and SIGHUP.

Ctrl-C, `timeout`, CI runners, docker and a closed terminal stop a process with these
signals. Inside `stopping_cleanly()` each raises `Interrupted`, which unwinds like any
failure: every `finally` and `except BaseException` on the way removes what it must
(temporary outputs, see `ckpttool.atomic`), and the CLI exits with 128 + the signal's
number, as a shell reports a process the signal killed. Kept apart from `atomic` so the
CLI installs the handlers without importing the writers.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

# SIGHUP does not exist on Windows.
STOP_SIGNALS = tuple(
    s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if isinstance(s, signal.Signals)
)


class Interrupted(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt: it passes every
    `except Exception`, and every `finally` and `except BaseException` cleans up on the way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process killed by the signal

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class _SignalState:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.holding = 0  # depth of `held()` blocks
        self.pending: int | None = None  # the first signal that arrived while holding
        self.unwinding = False  # an Interrupted is on its way out: later signals change nothing

    def interrupt(self, signum: int) -> Interrupted:
        self.unwinding = True
        return Interrupted(signum)


_state = _SignalState()


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if _state.unwinding:
        return  # the first signal's cleanup is running; a second one must not cut it short
    if _state.holding:
        _state.pending = _state.pending or signum
        return
    raise _state.interrupt(signum)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Signals that arrive during the block take effect when it ends, and then win over
    any exception the block raised."""
    _state.holding += 1
    try:
        yield
    finally:
        _state.holding -= 1
        if not _state.holding and _state.pending is not None and not _state.unwinding:
            signum, _state.pending = _state.pending, None
            raise _state.interrupt(signum)


def stop_pending() -> bool:
    """A stop signal arrived inside `held()` and waits for the block to end: long work held
    that way (inside a library that would swallow the exception) checks this to end early."""
    return _state.pending is not None


@contextlib.contextmanager
def stopping_cleanly() -> Iterator[None]:
    """Within the block, stop signals raise Interrupted; the previous handlers come back after.

    A signal the process was started with ignored (`nohup`, a background job's SIGINT)
    stays ignored, as Python itself leaves an ignored SIGINT alone. Handlers can only be
    set from the main thread; elsewhere the block runs with the signals as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _state.reset()
