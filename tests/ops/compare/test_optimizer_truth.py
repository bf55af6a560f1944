"""`optimizer` against `optimizer.state_dict()`: every param group hyper-parameter, each
parameter's step and state tensors (shape and dtype), the optimizer type, and parameter
names, exact with `--model` and a labelled guess without it.

Optimizers are real ones (Adam, AdamW, SGD with momentum, RMSprop, several groups) that
took two steps on a model, saved the way training scripts and Lightning save them;
the committed fixtures' optimizer states are compared as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from support import checkmodels
from support.compare import (
    CHECK_MODELS_FILE,
    TUTORIAL_MODELS_FILE,
    jsonable,
    output_json,
    parameter_index_names,
    save,
    spec,
    state_tensors,
    step_of,
    take_steps,
)
from support.groundtruth import fixture_path, fixture_record, torch_load_trusted, tutorial_models
from torch import nn

Cli = Callable[..., Result]
Params = Any  # what an optimizer accepts: parameters or param group dicts


@dataclass(frozen=True)
class OptimizerCase:
    """An optimizer torch builds, and the type `optimizer` should infer for it."""

    name: str
    build: Callable[[Params], torch.optim.Optimizer]
    type: str


CASES = [
    OptimizerCase("adam", lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.8, 0.99), weight_decay=1e-4), "Adam"),
    OptimizerCase("adam_amsgrad", lambda p: torch.optim.Adam(p, lr=1e-3, amsgrad=True), "Adam"),
    OptimizerCase("adamw", lambda p: torch.optim.AdamW(p, lr=2e-3, weight_decay=0.05), "AdamW"),
    OptimizerCase(
        "sgd_momentum", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4), "SGD-momentum"
    ),
    OptimizerCase("sgd_nesterov", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), "SGD-momentum"),
    OptimizerCase("rmsprop", lambda p: torch.optim.RMSprop(p, lr=1e-2, alpha=0.9), "RMSprop"),
    OptimizerCase(
        "rmsprop_centered_momentum",
        lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5, centered=True),
        "RMSprop",
    ),
]
# The four the tutorials and the issue name; the variants above are covered once each.
MAIN_CASES = [c for c in CASES if c.name in ("adam", "adamw", "sgd_momentum", "rmsprop")]
CNN_SPEC = spec(TUTORIAL_MODELS_FILE, "CNN")
TWIN_SPEC = spec(CHECK_MODELS_FILE, "TwinLinear")


def cnn() -> nn.Module:
    torch.manual_seed(0)
    model: nn.Module = tutorial_models().CNN()
    return model


def cnn_batch() -> torch.Tensor:
    return torch.randn(2, 1, 28, 28)


def twin() -> checkmodels.TwinLinear:
    torch.manual_seed(0)
    return checkmodels.TwinLinear()


def twin_batch() -> torch.Tensor:
    return torch.randn(3, 4)


def trained(
    model: nn.Module, params: Params, case: OptimizerCase, batch: Callable[[], torch.Tensor]
) -> torch.optim.Optimizer:
    optimizer = case.build(params)
    torch.manual_seed(1)
    take_steps(model, optimizer, batch)
    return optimizer


def run_optimizer(cli: Cli, path: Path, *options: Any) -> dict[str, Any]:
    result = cli("optimizer", path, "--format", "json", *options)
    assert result.exit_code == 0, (result.exit_code, result.stderr)
    return output_json(result)


def assert_matches_state_dict(report: dict[str, Any], state_dict: Mapping[str, Any]) -> None:
    """Groups and per-parameter state exactly as optimizer.state_dict() holds them."""
    assert report["inferred"] is True
    assert report["param_groups"] == jsonable(state_dict["param_groups"])
    expected = [
        {
            "index": index,
            "step": step_of(value),
            "tensors": state_tensors(value),
            "values": {k: jsonable(v) for k, v in value.items() if not isinstance(v, torch.Tensor) and k != "step"},
        }
        for index, value in state_dict["state"].items()
    ]
    found = [{k: row[k] for k in ("index", "step", "tensors", "values")} for row in report["state"]]
    assert found == expected


def assert_names(report: dict[str, Any], truth: Mapping[int, str], prefix: str = "") -> None:
    assert {row["index"]: row["name"] for row in report["state"]} == {
        row["index"]: prefix + truth[row["index"]] for row in report["state"]
    }


# -- one optimizer over a whole model ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_agrees_with_state_dict_and_names_from_model(cli: Cli, tmp_path: Path, case: OptimizerCase) -> None:
    model = cnn()
    optimizer = trained(model, model.parameters(), case, cnn_batch)
    path = save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    truth = parameter_index_names(model, optimizer)

    (report,) = run_optimizer(cli, path, "--model", CNN_SPEC)["optimizers"]
    assert (report["path"], report["type"], report["names"]) == ("optimizer", case.type, "model")
    assert_matches_state_dict(report, optimizer.state_dict())
    assert_names(report, truth)

    (guess,) = run_optimizer(cli, path)["optimizers"]
    assert guess["names"] == "file"  # said to be a guess
    assert any("guess" in note for note in guess["notes"])
    assert_names(guess, truth)
    assert_matches_state_dict(guess, optimizer.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES[:1] + CASES[3:4], ids=["adam", "sgd_momentum"])
def test_scalar_and_never_updated_parameters(cli: Cli, tmp_path: Path, case: OptimizerCase) -> None:
    """A 0-dim parameter has 0-dim moments; a layer without gradients has no state, yet
    its indices still count when naming the others."""
    model = twin()
    optimizer = trained(model, model.parameters(), case, twin_batch)
    state = optimizer.state_dict()
    assert len(state["state"]) < len(state["param_groups"][0]["params"])  # `unused` has none
    path = save({"model": model.state_dict(), "optimizer": state}, tmp_path / "ckpt.pt")
    (report,) = run_optimizer(cli, path, "--model", TWIN_SPEC)["optimizers"]
    assert_matches_state_dict(report, state)
    assert report["names"] == "model"
    assert_names(report, parameter_index_names(model, optimizer))


@pytest.mark.slow
def test_whole_pickled_model_names_its_parameters(cli: Cli, tmp_path: Path) -> None:
    """`{'model': nn.Module, 'optimizer': ...}`: names guessed from the pickled module."""
    model = cnn()
    optimizer = trained(model, model.parameters(), CASES[0], cnn_batch)
    path = save({"model": model, "optimizer": optimizer.state_dict()}, tmp_path / "whole.pt")
    (report,) = run_optimizer(cli, path)["optimizers"]
    assert report["names"] == "file"
    assert_names(report, parameter_index_names(model, optimizer))
    assert_matches_state_dict(report, optimizer.state_dict())


# -- several param groups ------------------------------------------------------------------------


def model_order_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Layer-wise settings with the groups in model order: convolutions, then the head."""
    conv = [p for n, p in model.named_parameters() if n.startswith("conv")]
    head = [p for n, p in model.named_parameters() if not n.startswith("conv")]
    return [{"params": conv, "lr": 1e-3}, {"params": head, "lr": 1e-2, "weight_decay": 0.1}]


@pytest.mark.slow
@pytest.mark.parametrize("case", MAIN_CASES, ids=[c.name for c in MAIN_CASES])
def test_groups_in_model_order(cli: Cli, tmp_path: Path, case: OptimizerCase) -> None:
    model = cnn()
    optimizer = trained(model, model_order_groups(model), case, cnn_batch)
    path = save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    (report,) = run_optimizer(cli, path, "--model", CNN_SPEC)["optimizers"]
    assert len(report["param_groups"]) == 2
    assert_matches_state_dict(report, optimizer.state_dict())
    assert (report["type"], report["names"]) == (case.type, "model")
    assert_names(report, parameter_index_names(model, optimizer))


def assert_names_right_or_absent(report: dict[str, Any], truth: Mapping[int, str]) -> None:
    """A name ckpttool gives is the parameter's true name; it may also give none."""
    for row in report["state"]:
        assert row["name"] in (None, truth[row["index"]]), row["index"]
    if report["names"] is None:
        assert report["notes"], "unresolved names come with a reason"


@pytest.mark.slow
def test_head_first_groups_are_not_misnamed(cli: Cli, tmp_path: Path) -> None:
    """Groups out of model order (the head's learning rate first), shapes that differ."""
    model = cnn()
    head_first = list(reversed(model_order_groups(model)))
    optimizer = trained(model, head_first, CASES[0], cnn_batch)
    path = save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    truth = parameter_index_names(model, optimizer)
    for options in ((), ("--model", CNN_SPEC)):
        (report,) = run_optimizer(cli, path, *options)["optimizers"]
        assert_matches_state_dict(report, optimizer.state_dict())
        assert_names_right_or_absent(report, truth)


@pytest.mark.slow
def test_frozen_layer_left_out_is_not_misnamed(cli: Cli, tmp_path: Path) -> None:
    """Only trainable parameters handed to the optimizer: its indices skip the frozen ones."""
    model = cnn()
    model.conv1.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = trained(model, trainable, CASES[2], cnn_batch)
    path = save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    truth = parameter_index_names(model, optimizer)
    for options in ((), ("--model", CNN_SPEC)):
        (report,) = run_optimizer(cli, path, *options)["optimizers"]
        assert_matches_state_dict(report, optimizer.state_dict())
        assert_names_right_or_absent(report, truth)


@pytest.mark.slow
def test_same_shaped_groups_out_of_model_order_are_not_called_exact(cli: Cli, tmp_path: Path) -> None:
    """Two layers of one shape, the second's group first (fine-tuning the top layer at its
    own rate). Every position matches a parameter's shape, so position alone would name
    `second.weight` as `first.weight`: names from --model must still be right, or absent."""
    model = twin()
    groups = [
        {"params": [model.scale]},
        {"params": list(model.second.parameters()), "lr": 1e-2},
        {"params": list(model.first.parameters()), "lr": 1e-3},
        {"params": list(model.unused.parameters())},
    ]
    optimizer = trained(model, groups, CASES[0], twin_batch)
    path = save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    (report,) = run_optimizer(cli, path, "--model", TWIN_SPEC)["optimizers"]
    assert_matches_state_dict(report, optimizer.state_dict())
    assert_names_right_or_absent(report, parameter_index_names(model, optimizer))


# -- Lightning -----------------------------------------------------------------------------------


def lightning_checkpoint(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> dict[str, Any]:
    """What Lightning's Trainer.save_checkpoint writes for a LightningModule holding `model`."""
    return {
        "epoch": 1,
        "global_step": 2,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "loops": {},
        "callbacks": {},
        "optimizer_states": [o.state_dict() for o in optimizers],
        "lr_schedulers": [{"step_size": 1, "gamma": 0.5, "base_lrs": [1e-3], "last_epoch": 1}],
        "hyper_parameters": {"lr": 1e-3},
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", MAIN_CASES, ids=[c.name for c in MAIN_CASES])
def test_lightning_optimizer_states(cli: Cli, tmp_path: Path, case: OptimizerCase) -> None:
    model = cnn()
    optimizer = trained(model, model.parameters(), case, cnn_batch)
    path = save(lightning_checkpoint(model, [optimizer]), tmp_path / "epoch=1.ckpt")
    truth = parameter_index_names(model, optimizer)

    (report,) = run_optimizer(cli, path, "--model", CNN_SPEC)["optimizers"]
    assert (report["path"], report["type"], report["names"]) == ("optimizer_states.0", case.type, "model")
    assert_matches_state_dict(report, optimizer.state_dict())
    assert_names(report, truth)

    # Without --model the names are the LightningModule's own: `model.` + the CNN's.
    (guess,) = run_optimizer(cli, path)["optimizers"]
    assert guess["names"] == "file"
    assert_names(guess, truth, prefix="model.")


@pytest.mark.slow
def test_lightning_two_optimizers(cli: Cli, tmp_path: Path) -> None:
    """A GAN's two optimizers, each over part of the module: both reported, in order."""
    generator, discriminator = checkmodels.Generator(), checkmodels.Discriminator()
    both = nn.ModuleDict({"generator": generator, "discriminator": discriminator})
    g_opt = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.SGD(discriminator.parameters(), lr=1e-2, momentum=0.9)
    torch.manual_seed(2)
    take_steps(generator, g_opt, lambda: torch.randn(4, 8))
    take_steps(discriminator, d_opt, lambda: torch.randn(4, 16))
    path = save(lightning_checkpoint(both, [g_opt, d_opt]), tmp_path / "gan.ckpt")

    reports = run_optimizer(cli, path)["optimizers"]
    assert [(r["path"], r["type"]) for r in reports] == [
        ("optimizer_states.0", "Adam"),
        ("optimizer_states.1", "SGD-momentum"),
    ]
    for report, optimizer, part, name in zip(
        reports, (g_opt, d_opt), (generator, discriminator), ("generator", "discriminator"), strict=True
    ):
        assert_matches_state_dict(report, optimizer.state_dict())
        truth = {i: f"model.{name}.{n}" for i, n in parameter_index_names(part, optimizer).items()}
        assert_names_right_or_absent(report, truth)


# -- the committed fixtures -----------------------------------------------------------------------


def optimizer_states(obj: Any, path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every optimizer state_dict in a loaded checkpoint, with its dotted path."""
    if isinstance(obj, Mapping):
        if isinstance(obj.get("state"), Mapping) and isinstance(obj.get("param_groups"), list):
            yield path, obj
            return
        for key, value in obj.items():
            yield from optimizer_states(value, f"{path}.{key}" if path else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from optimizer_states(value, f"{path}.{index}" if path else str(index))


# Fixture -> the optimizer its generator stepped (index.json's `style` names it).
WITH_OPTIMIZER = {
    "imagenet_style_checkpoint": "SGD-momentum",
    "model_optimizer_checkpoint": "Adam",
    "general_checkpoint_tensor_loss": "AdamW",
    "general_checkpoint_float_loss": "RMSprop",
    "lightning_checkpoint": "Adam",
    "lightning_checkpoint_namespace_hparams": "Adam",
    "timm_checkpoint_with_ema": "SGD-momentum",
    "cuda0_model_optimizer": "Adam",
}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kind"), WITH_OPTIMIZER.items())
def test_committed_fixtures(cli: Cli, name: str, kind: str) -> None:
    record = fixture_record(name)
    truth = dict(optimizer_states(torch_load_trusted(fixture_path(record))))
    assert truth, "the fixture holds an optimizer state"
    reports = run_optimizer(cli, fixture_path(record))["optimizers"]
    assert [r["path"] for r in reports] == list(truth)
    for report in reports:
        assert_matches_state_dict(report, truth[report["path"]])
        assert report["type"] == kind


# -- every optimizer torch ships -------------------------------------------------------------------

TORCH_OPTIMIZERS = ["Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop", "LBFGS", "Adafactor"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCH_OPTIMIZERS)
def test_type_of_every_torch_optimizer(cli: Cli, tmp_path: Path, name: str) -> None:
    """The class is not stored; its param group's hyper-parameters name it."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = getattr(torch.optim, name)(model.parameters(), lr=0.01)

    def closure() -> torch.Tensor:  # LBFGS re-evaluates; the others call it once
        optimizer.zero_grad()
        loss = model(torch.randn(2, 4)).square().mean()
        loss.backward()
        return loss

    for _ in range(2):
        optimizer.step(closure)
    path = save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    (report,) = run_optimizer(cli, path)["optimizers"]
    assert report["type"] == name
    if name != "LBFGS":  # LBFGS keeps lists of history tensors, not per-parameter moments
        assert_matches_state_dict(report, optimizer.state_dict())


# -- names guessed for the model corners -----------------------------------------------------------

CORNER_INPUTS: dict[str, Callable[[], torch.Tensor]] = {
    "TiedEmbeddingLM": lambda: torch.randint(0, 32, (2, 4)),
    "BatchNormNet": lambda: torch.randn(4, 8),
    "NonPersistentBufferNet": lambda: torch.randn(4, 8),
    "NoneParamNet": lambda: torch.randn(3, 8),
    "NestedContainerNet": lambda: torch.randn(3, 4),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", CORNER_INPUTS)
def test_guessed_names_for_model_corners(cli: Cli, tmp_path: Path, name: str) -> None:
    """Tied weights (one parameter, two state_dict keys), buffers, `None` parameters and
    nested containers. From a pickled module the guess is always right; from a state_dict
    it is right, or withheld with the reason."""
    torch.manual_seed(0)
    model: nn.Module = tutorial_models().MODEL_CLASSES[name]()
    optimizer = trained(model, model.parameters(), CASES[0], CORNER_INPUTS[name])
    truth = parameter_index_names(model, optimizer)

    whole = save({"model": model, "optimizer": optimizer.state_dict()}, tmp_path / "whole.pt")
    (report,) = run_optimizer(cli, whole)["optimizers"]
    assert report["names"] == "file"
    assert_names(report, truth)

    plain = save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "plain.pt")
    (report,) = run_optimizer(cli, plain)["optimizers"]
    assert_names_right_or_absent(report, truth)
