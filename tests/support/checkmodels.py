"""Model definitions the check and optimizer tests name with `--model path/to/checkmodels.py:Name`.

Self-contained on purpose: ckpttool imports this file by path, as a user's own model
file, so it must not rely on the test suite's import path. The tutorial's CNN comes
from ``fixtures/tutorial_models.py`` by file location for the same reason.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

_TUTORIAL_MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "tutorial_models.py"


def _tutorial_models() -> ModuleType:
    # The name the test helpers register it under, so both see one set of classes.
    module = sys.modules.get("tutorial_models")
    if module is None:
        spec = importlib.util.spec_from_file_location("tutorial_models", _TUTORIAL_MODELS)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["tutorial_models"] = module
        spec.loader.exec_module(module)
    return module


CNN = _tutorial_models().CNN


class WarmStartCNN(CNN):  # type: ignore[misc, valid-type]
    """Model B of the warm-start recipe: model A's layers plus a new head, so A's
    weights load with strict=False and leave the new layer missing."""

    def __init__(self, num_classes: int = 10, head_outputs: int = 4) -> None:
        super().__init__(num_classes=num_classes)
        self.head = nn.Linear(num_classes, head_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(super().forward(x)))


class Wrapped(nn.Module):
    """The tutorial CNN one level down (`backbone.`): a plain CNN checkpoint needs a prefix added."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = CNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


class Generator(nn.Module):
    def __init__(self, latent: int = 8, out: int = 16) -> None:
        super().__init__()
        self.project = nn.Linear(latent, 32)
        self.render = nn.Linear(32, out)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.render(torch.relu(self.project(z)))


class Discriminator(nn.Module):
    def __init__(self, features: int = 16) -> None:
        super().__init__()
        self.features = nn.Linear(features, 8)
        self.classifier = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.features(x)))


def mlp_generator() -> nn.Module:
    """A GAN generator as an `nn.Sequential`: keys `0.weight`, `2.weight`, ..."""
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))


def mlp_discriminator() -> nn.Module:
    """The matching discriminator: the generator's keys, other shapes."""
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))


class ScalarScaleNet(nn.Module):
    """A 0-dim parameter (a learned temperature): old checkpoints stored it with shape [1]."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.temperature = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) / self.temperature


class TwinLinear(nn.Module):
    """Two layers of the same shape, plus one that never gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x))) * self.scale


class WeightNormNet(nn.Module):
    """A layer under `parametrizations.weight_norm`: its state_dict keys are
    `proj.parametrizations.weight.original0/1`, and a load hook accepts the `weight_g` /
    `weight_v` keys the older `torch.nn.utils.weight_norm` saved."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.utils.parametrizations.weight_norm(nn.Linear(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
