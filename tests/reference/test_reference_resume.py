"""Training k epochs, saving, resuming and finishing equals training straight through.

The checkpoint is read back through ckpttool's code-free reader, as `reference check`
reads it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpttool.errors import UsageError
from ckpttool.reference.data import ReferenceData
from ckpttool.reference.resume import compare_states, prove_resume, same_bits
from ckpttool.reference.train import TrainConfig, TrainingRun

# From conftest.py, as a fixture.
WeightsLoader = Callable[[Path], Mapping[str, Any]]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resume_is_bit_exact(
    digits: ReferenceData, tmp_path: Path, optimizer: str, read_through_ckpttool: WeightsLoader
) -> None:
    # Eight steps an epoch: what matters is that every epoch sees its own batches.
    config = TrainConfig.for_model("cnn", epochs=4, optimizer=optimizer, lr=0.01, steps_per_epoch=8)
    proof = prove_resume(config, digits, tmp_path, read_through_ckpttool)
    assert proof.identical, proof.mismatched
    assert proof.split_epoch == 2 and proof.total_epochs == 4
    assert proof.checkpoint == tmp_path / "resume_epoch002.pt"
    # Model weights and every optimizer state tensor (two per parameter for Adam).
    assert proof.compared > 6


@pytest.mark.slow
def test_a_changed_bit_is_found(digits: ReferenceData, tmp_path: Path, read_through_ckpttool: WeightsLoader) -> None:
    def load_and_nudge(path: Path) -> Mapping[str, Any]:
        saved = dict(read_through_ckpttool(path))
        weight = saved["model"]["fc1.bias"]
        weight.view(torch.int32)[0] ^= 1  # the last bit of one float
        return saved

    config = TrainConfig.for_model("nn", epochs=2)
    proof = prove_resume(config, digits, tmp_path, load_and_nudge, split_epoch=1)
    assert not proof.identical
    assert "model.fc1.bias" in proof.mismatched


@pytest.mark.slow
def test_the_data_order_of_the_remaining_epochs_matters(digits: ReferenceData) -> None:
    # What makes the proof meaningful: resuming with the order of another epoch (as a
    # run that forgot where it stopped would) does not give the straight-through weights.
    config = TrainConfig.for_model("nn", epochs=2)
    straight = TrainingRun(config, digits)
    straight.train_until(1)
    saved = copy.deepcopy({"model": straight.model.state_dict(), "optimizer": straight.optimizer.state_dict()})
    straight.train_until(2)
    outcomes = {}
    for claimed_epochs in (1, 0):
        resumed = TrainingRun(config, digits)
        resumed.restore(saved["model"], saved["optimizer"], epochs_done=claimed_epochs)
        resumed.train_epoch()
        outcomes[claimed_epochs] = compare_states(straight.model.state_dict(), resumed.model.state_dict())[1]
    assert outcomes[1] == []
    assert outcomes[0]


def test_split_must_leave_epochs_on_both_sides(
    digits: ReferenceData, tmp_path: Path, read_through_ckpttool: WeightsLoader
) -> None:
    with pytest.raises(UsageError, match="0 < split epoch < epochs"):
        prove_resume(TrainConfig.for_model("nn", epochs=1), digits, tmp_path, read_through_ckpttool)


def test_same_bits_tells_nan_payloads_and_dtypes_apart() -> None:
    nan = torch.tensor([float("nan")])
    assert same_bits(nan, nan.clone())
    assert not same_bits(torch.zeros(1), -torch.zeros(1))
    assert not same_bits(torch.zeros(1), torch.zeros(1, dtype=torch.float64))
    assert same_bits(torch.tensor(3.0), torch.tensor(3.0))
    assert same_bits(0.9, 0.9) and not same_bits(0.9, torch.tensor(0.9))


@pytest.mark.slow
def test_resume_restores_batchnorm_statistics(
    digits: ReferenceData, tmp_path: Path, read_through_ckpttool: WeightsLoader
) -> None:
    config = TrainConfig.for_model("resnet34", epochs=2, batch_size=16, steps_per_epoch=2)
    proof = prove_resume(config, digits, tmp_path, read_through_ckpttool)
    assert proof.identical, proof.mismatched
