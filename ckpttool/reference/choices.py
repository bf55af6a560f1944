"""The names the reference command accepts, kept apart from torch.

The CLI builds its `click.Choice` lists from these without importing torch; the
modules that implement each name check at import time that they cover exactly these.
"""

from __future__ import annotations

MODEL_NAMES: tuple[str, ...] = (
    "nn",
    "cnn",
    "neural-network",
    "cifar10-net",
    "vgg16",
    "resnet34",
)
DATASET_NAMES: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")
OPTIMIZER_NAMES: tuple[str, ...] = ("adam", "sgd")
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")

# Every way the tutorials save a model, in the order they are written.
STYLE_NAMES: tuple[str, ...] = (
    "state-dict",
    "whole-model",
    "state-dict-optimizer",
    "model-optimizer",
    "general-checkpoint",
    "safetensors",
)

# The tolerance of recomputed logits and losses where the machine fingerprints
# differ; the measurements behind it are in `reference.compare`.
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
