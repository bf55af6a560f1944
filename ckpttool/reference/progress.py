"""Progress for people: one tqdm bar per phase (training, evaluating, saving, checking
files, the resume proof), each with the time it has left, and one line per epoch.

Bars are off unless the CLI turns them on (`bars_on(sys.stderr)`, only when stderr is a
terminal), so logs, pipes and the library get the per-epoch lines and no bar. The code
that does the work opens its phase and advances it without knowing whether anyone
watches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import IO, TYPE_CHECKING

from ckpttool.progress import Bar

if TYPE_CHECKING:
    from ckpttool.reference.train import EpochReport, TrainingRun

_STREAM: ContextVar[IO[str] | None] = ContextVar("reference_bar_stream", default=None)
_BAR: ContextVar[Bar | None] = ContextVar("reference_bar", default=None)


@contextlib.contextmanager
def bars_on(stream: IO[str] | None) -> Iterator[None]:
    """Show the phases' bars on `stream` (None: no bars) inside this block."""
    token = _STREAM.set(stream)
    try:
        yield
    finally:
        _STREAM.reset(token)


@contextlib.contextmanager
def phase(name: str, total: int, unit: str) -> Iterator[None]:
    """A bar for one phase of `total` units, with tqdm's estimate of the time left
    (`[elapsed<left]`); a phase inside another gets a bar of its own below it."""
    bar = Bar(name, _STREAM.get(), unit=unit, leave=False)
    bar.start(total)
    token = _BAR.set(bar)
    try:
        yield
    finally:
        _BAR.reset(token)
        bar.close()


def advance(units: int = 1) -> None:
    """`units` more of the innermost phase are done."""
    bar = _BAR.get()
    if bar is not None:
        bar.advance(units)


def describe(text: str) -> None:
    """What the innermost phase is at, after its bar (`epoch 2/3, loss 0.1234`)."""
    bar = _BAR.get()
    if bar is not None:
        bar.describe(text)


class ProgressReporter:
    """Reports each epoch's loss as a line, and the step's epoch and loss on the
    training bar (when bars are on)."""

    def __init__(self, total_epochs: int, report: Callable[[str], None]) -> None:
        self.total_epochs = total_epochs
        self.report = report

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        describe(f"epoch {epoch}/{self.total_epochs}, loss {loss:.4f}")

    def on_epoch_end(self, run: TrainingRun, report: EpochReport) -> None:
        epoch = f"epoch {report.epoch}/{self.total_epochs}"
        self.report(f"{epoch}: loss {report.loss:.4f} ({report.steps} steps)")
