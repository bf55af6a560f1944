"""The collector's pause around reading: what it made is kept out of the youngest
generation's walk, a program's own frozen objects stay frozen, and a command going from
file to file holds one file's model at a time (its cycles freed before the next file).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import ckpttool.gcpause as gcpause
from ckpttool.checkpoint import Storage
from ckpttool.ops.compare.checking import CheckOptions, check_paths
from ckpttool.ops.safety.paths import scan_paths


class _Node:
    """A cycle (it holds itself): only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_what_a_pause_made_is_promoted_unwalked() -> None:
    gc.collect()
    walks = gc.get_stats()[0]["collections"]
    with gcpause.gc_paused():
        nodes = [_Node() for _ in range(20_000)]
    _ = [[] for _ in range(100)]  # allocations after the pause: no walk of the 20,000 is due
    assert gc.get_stats()[0]["collections"] == walks
    assert any(o is nodes[0] for o in gc.get_objects(generation=2))
    cycle = weakref.ref(nodes[0])
    del nodes
    assert cycle() is not None  # in the oldest generation now, freed by a full collection
    gc.collect()
    assert cycle() is None


def test_a_programs_frozen_objects_stay_frozen() -> None:
    gc.collect()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with gcpause.gc_paused():
            _Node()
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_each_file_frees_the_cycles_of_the_files_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcpause, "PROMOTED_LIMIT", 1_000)
    made: list[weakref.ref[_Node]] = []
    alive_when_next_started: list[bool] = []

    def work(count: int) -> int:
        alive_when_next_started.append(bool(made) and made[-1]() is not None)
        with gcpause.gc_paused():
            made.append(weakref.ref(_Node()))
            _ = [object() for _ in range(count)]  # the pause's other objects
            _ = [_Node() for _ in range(count)]
        return count

    assert gcpause.each_file([5_000, 5_000, 10], work) == [5_000, 5_000, 10]
    assert alive_when_next_started == [False, False, False]


def test_small_files_cost_no_full_collection_each() -> None:
    collections = gc.get_stats()[2]["collections"]
    made: list[weakref.ref[_Node]] = []

    def work(item: int) -> None:
        with gcpause.gc_paused():
            made.append(weakref.ref(_Node()))

    gcpause.each_file(range(50), work)
    # at most the one owed to the files before (other tests' files, in this process)
    assert gc.get_stats()[2]["collections"] - collections <= 1
    assert all(ref() is not None for ref in made)  # left to the collector's own schedule


@pytest.fixture
def three_files(tmp_path: Path) -> list[str]:
    paths = []
    for i in range(3):
        path = tmp_path / f"m{i}.pt"
        torch.save({f"w{k}": torch.full((2,), float(k)) for k in range(300)}, path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("command", ["check", "scan"])
def test_a_command_over_files_holds_one_model_at_a_time(
    command: str, three_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted: the storages alive when each file starts (a storage's record points back at
    it and at the tensors, so without the collection between files they outlive their file)."""
    monkeypatch.setattr(gcpause, "PROMOTED_LIMIT", 0)
    alive: list[int] = []
    real = gcpause.each_file

    def counting(items: list[str], work: object) -> object:
        def counted(item: str) -> object:
            alive.append(sum(1 for o in gc.get_objects() if type(o) is Storage))
            return work(item)  # type: ignore[operator]

        return real(items, counted)

    gc.collect()
    before = sum(1 for o in gc.get_objects() if type(o) is Storage)  # other tests' files, kept by them
    if command == "check":
        monkeypatch.setattr("ckpttool.ops.compare.checking.each_file", counting)
        reports = check_paths(three_files, CheckOptions())
        assert [r.path for r in reports] == three_files
    else:
        monkeypatch.setattr("ckpttool.ops.safety.paths.each_file", counting)
        entries = scan_paths(three_files)
        assert [e.path for e in entries] == three_files
    assert alive == [before] * 3
