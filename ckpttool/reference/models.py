"""The tutorial models, exactly as the tutorials define them, and a registry of them.

Attribute names are kept as the tutorials wrote them (`fc1`, `linear_relu_stack`,
`model1`, ...) because they become the state_dict keys, and the fixtures should have
the keys that real files saved from these tutorials have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ckpttool.errors import UsageError


class NN(nn.Module):
    """The fully connected network: one hidden layer of 50 units."""

    def __init__(self, input_size: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_size, 50)
        self.fc2 = nn.Linear(50, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The tutorial flattens in its training loop; doing it here lets every model
        # take image batches, and adds nothing to the state_dict.
        x = x.reshape(x.shape[0], -1)
        logits: torch.Tensor = self.fc2(F.relu(self.fc1(x)))
        return logits


class CNN(nn.Module):
    """The small MNIST conv net: conv 8 -> pool -> conv 16 -> pool -> linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, kernel_size=3, stride=1, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, stride=1, padding=1)
        self.fc1 = nn.Linear(16 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        logits: torch.Tensor = self.fc1(x.reshape(x.shape[0], -1))
        return logits


class NeuralNetwork(nn.Module):
    """The FashionMNIST quickstart MLP: Flatten, 512, 512, 10."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.linear_relu_stack(self.flatten(x))
        return logits


class CIFAR10Net(nn.Module):
    """The CIFAR-10 conv net: three 5x5 convs (32, 32, 64) with pooling, 64, 10.

    The tutorial puts no activation between the layers; neither does this.
    """

    def __init__(self) -> None:
        super().__init__()
        self.model1 = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model1(x)
        return logits


@dataclass(frozen=True)
class TrainingDefaults:
    """What `reference train` uses for a model when an option is not given.

    The torchvision models train a few steps per epoch on 32x32 inputs, so that each
    finishes on a laptop CPU in well under a minute.
    """

    epochs: int
    batch_size: int = 64
    lr: float = 1e-3
    steps_per_epoch: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """How to build one reference model, what it takes as input, how to train it."""

    name: str
    constructor: Callable[..., nn.Module]
    constructor_path: str
    input_shape: tuple[int, int, int]
    defaults: TrainingDefaults
    kwargs: dict[str, object] = field(default_factory=dict)

    def create(self) -> nn.Module:
        return self.constructor(**self.kwargs)


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "nn",
            NN,
            f"{__name__}.NN",
            (1, 28, 28),
            TrainingDefaults(epochs=10),
            {"input_size": 28 * 28, "num_classes": 10},
        ),
        ModelSpec(
            "cnn",
            CNN,
            f"{__name__}.CNN",
            (1, 28, 28),
            TrainingDefaults(epochs=10),
            {"in_channels": 1, "num_classes": 10},
        ),
        ModelSpec(
            "neural-network",
            NeuralNetwork,
            f"{__name__}.NeuralNetwork",
            (1, 28, 28),
            TrainingDefaults(epochs=10),
        ),
        ModelSpec(
            "cifar10-net",
            CIFAR10Net,
            f"{__name__}.CIFAR10Net",
            (3, 32, 32),
            TrainingDefaults(epochs=10),
        ),
        ModelSpec(
            "vgg16",
            torchvision.models.vgg16,
            "torchvision.models.vgg16",
            (3, 32, 32),
            TrainingDefaults(epochs=1, batch_size=32, lr=1e-4, steps_per_epoch=8),
            {"weights": None, "num_classes": 10},
        ),
        ModelSpec(
            "resnet34",
            torchvision.models.resnet34,
            "torchvision.models.resnet34",
            (3, 32, 32),
            TrainingDefaults(epochs=3),
            {"weights": None, "num_classes": 10},
        ),
    )
}


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        known = ", ".join(MODEL_SPECS)
        raise UsageError(f"unknown reference model {name!r}; choose one of {known}") from None


def module_classes(model: nn.Module) -> list[type]:
    """Every module class in `model`'s tree: what a whole-model pickle refers to."""
    return sorted({type(module) for module in model.modules()}, key=lambda t: t.__qualname__)
