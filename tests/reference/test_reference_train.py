"""Each model learns the digits, deterministically, without leaking global state."""

from __future__ import annotations

import math

import pytest
import torch

from ckpttool.errors import UsageError
from ckpttool.reference.data import ReferenceData
from ckpttool.reference.train import (
    TrainConfig,
    TrainingRun,
    batch_slices,
    epoch_order,
    reproducible,
    resolve_device,
    train,
)

# Test accuracy on digits with the model's default settings, seed 0. Measured over
# seeds 0-4 on CPU: nn 0.956-0.969, cnn 0.944-0.961, neural-network 0.961-0.981,
# cifar10-net 0.972-0.983; the thresholds leave a margin for other machines.
ACCURACY_FLOOR = {"nn": 0.93, "cnn": 0.92, "neural-network": 0.94, "cifar10-net": 0.94}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=pytest.mark.slow) if name == "cifar10-net" else name for name in sorted(ACCURACY_FLOOR)],
)
def test_default_training_reaches_the_stated_accuracy(digits: ReferenceData, name: str) -> None:
    run = train(TrainConfig.for_model(name), digits)
    test = run.evaluate(digits.test)
    assert test.accuracy >= ACCURACY_FLOOR[name]
    assert test.examples == 360
    losses = [report.loss for report in run.history]
    assert len(losses) == run.config.epochs and losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param("vgg16", marks=pytest.mark.slow), "resnet34"])
def test_torchvision_models_take_a_few_steps_to_finite_logits(digits: ReferenceData, name: str) -> None:
    config = TrainConfig.for_model(name, epochs=1, batch_size=8, steps_per_epoch=2)
    run = train(config, digits)
    assert run.history[0].steps == 2 and math.isfinite(run.history[0].loss)
    logits = run.probe_logits()
    assert logits.shape == (16, 10) and bool(torch.isfinite(logits).all())


@pytest.mark.slow
def test_same_config_gives_bit_identical_weights(digits: ReferenceData) -> None:
    config = TrainConfig.for_model("nn", epochs=2)
    first, second = train(config, digits), train(config, digits)
    for key, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[key]), key
    assert torch.equal(first.probe_logits(), second.probe_logits())


def test_seed_changes_the_initial_weights(digits: ReferenceData) -> None:
    a = TrainingRun(TrainConfig.for_model("nn", seed=0), digits)
    b = TrainingRun(TrainConfig.for_model("nn", seed=1), digits)
    assert not torch.equal(a.model.fc1.weight, b.model.fc1.weight)


def test_training_leaves_global_random_state_and_flags_alone(digits: ReferenceData) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    train(TrainConfig.for_model("nn", epochs=1, steps_per_epoch=2), digits)
    assert torch.equal(torch.rand(3), expected)
    assert not torch.are_deterministic_algorithms_enabled()


def test_each_epoch_has_its_own_order_fixed_by_seed() -> None:
    assert torch.equal(epoch_order(100, seed=0, epoch=3), epoch_order(100, seed=0, epoch=3))
    assert not torch.equal(epoch_order(100, seed=0, epoch=3), epoch_order(100, seed=0, epoch=4))
    assert not torch.equal(epoch_order(100, seed=0, epoch=3), epoch_order(100, seed=1, epoch=3))
    assert sorted(epoch_order(100, 0, 0).tolist()) == list(range(100))


def test_no_batch_of_one_is_formed() -> None:
    sizes = [len(batch) for batch in batch_slices(torch.arange(9), 4)]
    assert sizes == [4, 5]
    assert [len(batch) for batch in batch_slices(torch.arange(8), 4)] == [4, 4]


def test_config_defaults_come_from_the_model_and_options_override() -> None:
    config = TrainConfig.for_model("vgg16", lr=None, seed=7)
    assert (config.epochs, config.batch_size, config.steps_per_epoch) == (1, 32, 8)
    assert config.seed == 7 and config.lr == 1e-4
    assert TrainConfig.for_model("cnn").deterministic


@pytest.mark.slow
def test_sgd_trains_with_momentum_state(digits: ReferenceData) -> None:
    run = train(TrainConfig.for_model("nn", epochs=1, optimizer="sgd", lr=0.05), digits)
    state = run.optimizer.state_dict()
    assert state["param_groups"][0]["momentum"] == 0.9
    assert set(state["state"][0]) == {"momentum_buffer"}


def test_devices() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no usable CUDA device"):
            resolve_device("cuda")


def test_reproducible_restores_the_callers_determinism_settings() -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with reproducible(torch.device("cpu"), seed=0):
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
