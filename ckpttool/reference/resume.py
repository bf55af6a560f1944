"""Proof that saving and resuming a training run changes nothing.

Train k epochs, save `{'model', 'optimizer'}`, load that file through a loader the
caller chooses into a fresh model and optimizer, train the remaining epochs, and
compare with the same run trained straight through: every weight, buffer and
optimizer state tensor must be bit-identical (on CPU, where training is
deterministic). The data order and dropout of each epoch depend only on the seed and
the epoch number, so the resumed run sees what the straight run saw.

The loader is a parameter so that the proof can run through any reader: a
`torch.load(weights_only=True)` wrapper, or ckpttool's own code-free reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ckpttool.errors import UsageError
from ckpttool.reference.data import ReferenceData
from ckpttool.reference.saving import save_style
from ckpttool.reference.train import TrainConfig, TrainingRun

# Reads a file written by `torch.save({'model': ..., 'optimizer': ...})` and returns
# the saved mapping, with real tensors on a device the model can load from.
CheckpointLoader = Callable[[Path], Mapping[str, Any]]


@dataclass(frozen=True)
class ResumeProof:
    """The outcome: `identical` holds when nothing differs by a single bit."""

    split_epoch: int
    total_epochs: int
    checkpoint: Path
    compared: int
    mismatched: list[str]

    @property
    def identical(self) -> bool:
        return not self.mismatched


def prove_resume(
    config: TrainConfig,
    data: ReferenceData,
    directory: Path,
    load: CheckpointLoader,
    split_epoch: int | None = None,
) -> ResumeProof:
    """Compare straight-through training with training resumed at `split_epoch`.

    The checkpoint is written into `directory` as `resume_epochNNN.pt`. The default
    split is half way (at least one epoch on each side; `config.epochs` >= 2).
    """
    split = _check_split(config.epochs, split_epoch)
    straight = TrainingRun(config, data)
    straight.train_until(split)
    checkpoint = save_style(straight, "model-optimizer", Path(directory), f"resume_epoch{split:03d}.pt").path
    straight.train_until(config.epochs)

    resumed = TrainingRun(config, data)
    saved = load(checkpoint)
    resumed.restore(saved["model"], saved["optimizer"], epochs_done=split)
    resumed.train_until(config.epochs)
    compared, mismatched = compare_states(_run_state(straight), _run_state(resumed))
    return ResumeProof(split, config.epochs, checkpoint, compared, mismatched)


def _check_split(epochs: int, split_epoch: int | None) -> int:
    split = epochs // 2 if split_epoch is None else split_epoch
    if not 0 < split < epochs:
        raise UsageError(f"resuming needs 0 < split epoch < epochs; got split {split} of {epochs} epochs")
    return split


def _run_state(run: TrainingRun) -> dict[str, Any]:
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict()}


def compare_states(expected: object, actual: object) -> tuple[int, list[str]]:
    """Count the tensors compared and list the dotted paths that are not bit-equal."""
    expected_leaves = dict(flatten_state(expected))
    actual_leaves = dict(flatten_state(actual))
    mismatched = sorted(set(expected_leaves) ^ set(actual_leaves))
    for key in sorted(set(expected_leaves) & set(actual_leaves)):
        if not same_bits(expected_leaves[key], actual_leaves[key]):
            mismatched.append(key)
    return len(expected_leaves), mismatched


def flatten_state(value: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Leaves of nested dicts, lists and tuples, keyed by their dotted path."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from flatten_state(item, f"{prefix}{key}.")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from flatten_state(item, f"{prefix}{index}.")
    else:
        yield prefix.rstrip("."), value


def same_bits(a: object, b: object) -> bool:
    """Tensors equal bit for bit (NaNs included); other values equal as values."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        return torch.equal(_bytes_of(a), _bytes_of(b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return bool(a == b) or (a != a and b != b)


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
