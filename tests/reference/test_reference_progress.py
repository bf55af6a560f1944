"""Each phase of `reference train` and `reference check` has a bar whose total is the
work it does (so that tqdm's estimate of the time left is one), and none when bars are off."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import tqdm

from ckpttool.reference.check import check_fixtures
from ckpttool.reference.choices import STYLE_NAMES
from ckpttool.reference.data import ReferenceData
from ckpttool.reference.fixtures import build_fixtures
from ckpttool.reference.progress import bars_on
from ckpttool.reference.train import TrainConfig, batch_slices, epoch_order, steps_per_epoch


class Recorded(tqdm.tqdm):  # type: ignore[type-arg]
    """A tqdm bar that remembers its name, total and how far it got."""

    closed: list[tuple[str, int, int]] = []

    def close(self) -> None:
        if not self.disable and self.total is not None:
            Recorded.closed.append((str(self.desc), int(self.total), int(self.n)))
        super().close()


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    Recorded.closed = []
    monkeypatch.setattr(tqdm, "tqdm", Recorded)
    return Recorded.closed


@pytest.mark.slow
def test_every_phase_ends_at_its_total(digits: ReferenceData, tmp_path: Path, bars: list[Any]) -> None:
    config = TrainConfig.for_model("cnn", epochs=2, steps_per_epoch=3)
    stream = io.StringIO()
    with bars_on(stream):
        build_fixtures(config, digits, tmp_path / "set", checkpoint_every=0)
    examples = len(digits.train) + len(digits.test)
    assert bars == [
        ("training", 6, 6),
        ("evaluating", examples, examples),
        ("saving", len(STYLE_NAMES), len(STYLE_NAMES)),
    ]
    assert "training" in stream.getvalue() and "<" in stream.getvalue()  # tqdm's [elapsed<left]

    bars.clear()
    with bars_on(stream):
        report = check_fixtures(tmp_path / "set", device="cpu", resume_epochs=2)
    assert report.ok
    names = [name for name, _, _ in bars]
    assert names[-1] == "resume proof" and "checking files" in names and "evaluating" in names
    assert all(done == total for _, total, done in bars), bars


@pytest.mark.slow
def test_no_bars_unless_turned_on(digits: ReferenceData, tmp_path: Path, bars: list[Any]) -> None:
    build_fixtures(TrainConfig.for_model("cnn", epochs=1, steps_per_epoch=2), digits, tmp_path, ["state-dict"])
    assert bars == []


@pytest.mark.parametrize("size", [1, 2, 63, 64, 65, 129, 1797])
@pytest.mark.parametrize("cap", [None, 3])
def test_steps_per_epoch_counts_the_batches(size: int, cap: int | None, digits: ReferenceData) -> None:
    config = TrainConfig.for_model("cnn", batch_size=64, steps_per_epoch=cap)
    batches = batch_slices(epoch_order(size, 0, 0), 64)
    expected = len(batches) if cap is None else min(len(batches), cap)

    class Sized:
        train = range(size)

    assert steps_per_epoch(config, Sized()) == expected  # type: ignore[arg-type]
