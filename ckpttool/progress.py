"""Progress, as every long step reports it: told a total, then each piece done.

The library only calls `start` and `advance` on what it is given (`Progress`); whether a
bar is drawn is the caller's choice. `Bar` is the one bar ckpttool draws: tqdm on a
stream, for the commands' bytes and the reference trainer's phases alike.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Never, Protocol

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress(Protocol):
    """Told the total (bytes of tensor data, or a phase's units), then each piece as it is done."""

    def start(self, total: int) -> None: ...
    def advance(self, done: int) -> None: ...


class NoProgress:
    """Progress nobody watches."""

    def start(self, total: int) -> None:
        pass

    def advance(self, done: int) -> None:
        pass


class Bar:
    """A tqdm bar on `stream` (None: no bar), drawn only for a total of at least `min_total`.
    Each `start` begins a new bar (one per output file), closing the one before."""

    def __init__(
        self, description: str, stream: IO[str] | None, unit: str = "B", min_total: int = 1, leave: bool = True
    ) -> None:
        self.description, self.stream, self.unit = description, stream, unit
        self.min_total, self.leave = min_total, leave
        self.bar: tqdm[Never] | None = None

    def start(self, total: int) -> None:
        self.close()
        if self.stream is not None and total >= self.min_total:
            from tqdm import tqdm

            bytes_ = self.unit == "B"  # bytes scale to KB, MB ...; a nested phase's bar follows the terminal's width
            self.bar = tqdm(total=total, desc=self.description, unit=self.unit, unit_scale=bytes_, file=self.stream,
                            leave=self.leave, dynamic_ncols=not self.leave)  # fmt: skip

    def advance(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done)

    def describe(self, text: str) -> None:
        """What the step is at, after the bar (`epoch 2/3, loss 0.1234`)."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
