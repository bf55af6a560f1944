"""Training progress for people: a tqdm bar per epoch and one line per epoch."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Never

from tqdm import tqdm

if TYPE_CHECKING:
    from ckpttool.reference.train import EpochReport, TrainingRun


class ProgressReporter:
    """Shows steps on a bar (when `bar_stream` is given) and reports each epoch's loss.

    The CLI passes stderr as `bar_stream` only when stderr is a terminal, so logs
    and pipes get the per-epoch lines and no bar.
    """

    def __init__(self, total_epochs: int, report: Callable[[str], None], bar_stream: IO[str] | None) -> None:
        self.total_epochs = total_epochs
        self.report = report
        self.bar_stream = bar_stream
        self.bar: tqdm[Never] | None = None

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        if self.bar_stream is None:
            return
        if self.bar is None:
            self.bar = tqdm(
                total=steps,
                desc=f"epoch {epoch}/{self.total_epochs}",
                unit="step",
                file=self.bar_stream,
                leave=False,
            )
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_epoch_end(self, run: TrainingRun, report: EpochReport) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        epoch = f"epoch {report.epoch}/{self.total_epochs}"
        self.report(f"{epoch}: loss {report.loss:.4f} ({report.steps} steps)")
