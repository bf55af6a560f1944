"""Stand-ins for classes that libraries pickle into checkpoints (transformers, Lightning,
fairseq), for tests: the real libraries are not installed. Each mirrors how its
original pickles: an `enum` member by its value, a dataclass by its `__dict__`, a module
as its class and state. Imported by the subprocess that saves the files and by the one
that loads them back."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch


class ExplicitEnum(str, enum.Enum):  # noqa: UP042 - transformers' own spelling, pickled as such
    """transformers.utils.generic.ExplicitEnum: a str enum, pickled as Cls('value')."""


class IntervalStrategy(ExplicitEnum):
    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class SchedulerType(ExplicitEnum):
    LINEAR = "linear"
    COSINE = "cosine"


@dataclass
class TrainingArguments:
    """transformers.TrainingArguments as `Trainer` saves it in training_args.bin."""

    output_dir: str = "out"
    learning_rate: float = 5e-5
    num_train_epochs: float = 3.0
    eval_strategy: IntervalStrategy = IntervalStrategy.STEPS
    save_strategy: IntervalStrategy = IntervalStrategy.EPOCH
    lr_scheduler_type: SchedulerType = SchedulerType.COSINE
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    seed: int = 42


class TinyClassifier(torch.nn.Module):
    """A user's model, saved whole (torch.save(model)) as tutorials show."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        self.norm = torch.nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.body(x))
