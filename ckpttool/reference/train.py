"""Seeded, deterministic training and evaluation of one reference model.

Everything random is a function of the seed and the epoch: the model's initial
weights come from the seed; each epoch's data order and dropout masks come from
`epoch_seed(seed, epoch)`. So a run that stops after k epochs and is resumed from
its saved model and optimizer state sees exactly the batches, and draws exactly the
random numbers, that a run straight through would, and on CPU (where
`torch.use_deterministic_algorithms` holds) ends with bit-identical weights.

Training never touches the caller's random state or determinism settings: both are
set inside a context and restored after. Progress goes to an observer; nothing here
prints.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ckpttool.errors import UsageError
from ckpttool.reference.data import ImageSplit, ReferenceData
from ckpttool.reference.models import ModelSpec, get_model_spec
from ckpttool.reference.progress import advance

EVAL_BATCH_SIZE = 256
SGD_MOMENTUM = 0.9


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the outcome of a training run."""

    model: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    seed: int = 0
    device: str = "cpu"
    # At most this many optimizer steps per epoch (None: the whole training split).
    steps_per_epoch: int | None = None

    @classmethod
    def for_model(cls, model: str, **overrides: Any) -> TrainConfig:
        """The model's defaults, with any option given as not None replacing them."""
        defaults = get_model_spec(model).defaults
        config = cls(
            model=model,
            epochs=defaults.epochs,
            batch_size=defaults.batch_size,
            lr=defaults.lr,
            steps_per_epoch=defaults.steps_per_epoch,
        )
        given = {key: value for key, value in overrides.items() if value is not None}
        return replace(config, **given)

    @property
    def deterministic(self) -> bool:
        """Bit-exact repeatability is promised on CPU only."""
        return torch.device(self.device).type == "cpu"


@dataclass(frozen=True)
class Evaluation:
    """Accuracy and mean cross-entropy over one split."""

    accuracy: float
    loss: float
    examples: int


@dataclass(frozen=True)
class EpochReport:
    """One finished epoch: its 1-based number, mean training loss and step count."""

    epoch: int
    loss: float
    steps: int


class TrainingObserver(Protocol):
    """Receives progress; the CLI's progress bar is one."""

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None: ...

    def on_epoch_end(self, run: TrainingRun, report: EpochReport) -> None: ...


class SilentObserver:
    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        pass

    def on_epoch_end(self, run: TrainingRun, report: EpochReport) -> None:
        pass


def resolve_device(choice: str) -> str:
    """`auto` is CUDA when a GPU is usable, else CPU; `cuda` without one is refused."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no usable CUDA device")
    if choice not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {choice!r}; choose auto, cpu or cuda")
    return choice


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of a 0-based epoch's data order and dropout, from the run's seed."""
    digest = hashlib.sha256(f"ckpttool-reference:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def epoch_order(size: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch `epoch` (0-based) visits the training examples."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(size, generator=generator)


@contextlib.contextmanager
def reproducible(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the generators `device` draws from and pin deterministic kernels.

    The generators' states and the kernel settings are restored on exit.
    """
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), _deterministic_kernels(device):
        torch.default_generator.manual_seed(seed)
        for index in cuda_devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


@contextlib.contextmanager
def _deterministic_kernels(device: torch.device) -> Iterator[None]:
    """CPU: `torch.use_deterministic_algorithms`. CUDA: cuDNN without autotuning, and
    float32 kept float32 (no TF32), so that GPU numbers stay close to the CPU's.

    On CUDA full determinism would need a cuBLAS workspace setting made before CUDA
    starts, so bit-exact results are promised on CPU only.
    """
    cudnn = torch.backends.cudnn
    saved_cudnn = (cudnn.deterministic, cudnn.benchmark)
    saved_flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        cudnn.deterministic, cudnn.benchmark = True, False
    try:
        with _full_float32(device):
            yield
    finally:
        torch.use_deterministic_algorithms(saved_flags[0], warn_only=saved_flags[1])
        cudnn.deterministic, cudnn.benchmark = saved_cudnn


@contextlib.contextmanager
def _full_float32(device: torch.device) -> Iterator[None]:
    """On CUDA, convolutions and matmuls in IEEE float32 rather than TF32.

    TF32 (cuDNN's default for convolutions) keeps 10 mantissa bits: logits would
    move by ~1e-3 from the CPU's, beyond the tolerance `reference check` allows.
    """
    if device.type != "cuda":
        yield
        return
    settings = _float32_settings()
    saved = [getattr(owner, name) for owner, name, _ in settings]
    for owner, name, value in settings:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(settings, saved, strict=True):
            setattr(owner, name, value)


def _float32_settings() -> list[tuple[object, str, object]]:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    # Only one API is touched: torch refuses to read the old `allow_tf32` flags once
    # the new `fp32_precision` ones have been set.
    if hasattr(cudnn, "conv"):
        return [(cudnn.conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    return [(cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]


def build_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if name == "sgd":
        # Momentum, so that SGD's optimizer state holds tensors worth reading.
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=SGD_MOMENTUM)
    raise UsageError(f"unknown optimizer {name!r}; choose adam or sgd")


def steps_per_epoch(config: TrainConfig, data: ReferenceData) -> int:
    """How many batches an epoch of `config` trains on (as `batch_slices` forms them)."""
    size = len(data.train)
    batches = max(math.ceil(size / config.batch_size), 1)
    if batches > 1 and size % config.batch_size == 1:  # a last batch of one joins the one before
        batches -= 1
    return batches if config.steps_per_epoch is None else min(batches, config.steps_per_epoch)


def batch_slices(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Batches of `order`; a last batch of one joins the one before.

    BatchNorm cannot train on a single example whose feature map is 1x1 (resnet34 at
    32x32), so no batch of one is ever formed.
    """
    batches = list(torch.split(order, batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


@dataclass
class TrainingRun:
    """A model, its optimizer and its data, trained epoch by epoch."""

    config: TrainConfig
    data: ReferenceData
    observer: TrainingObserver = field(default_factory=SilentObserver)
    model: nn.Module = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    spec: ModelSpec = field(init=False)
    epochs_done: int = field(init=False, default=0)
    history: list[EpochReport] = field(init=False, default_factory=list)
    seconds: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.spec = get_model_spec(self.config.model)
        # Built on CPU from the seed, then moved: the same initial weights everywhere.
        with reproducible(torch.device("cpu"), self.config.seed):
            model = self.spec.create()
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.config.optimizer, self.model, self.config.lr)

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    def train_until(self, epochs: int) -> list[EpochReport]:
        """Train the epochs from `epochs_done` up to `epochs`; report each one."""
        reports = []
        while self.epochs_done < epochs:
            report = self.train_epoch()
            reports.append(report)
            self.observer.on_epoch_end(self, report)
        return reports

    def train_epoch(self) -> EpochReport:
        started = time.perf_counter()
        epoch = self.epochs_done
        with reproducible(self.device, epoch_seed(self.config.seed, epoch)):
            loss, steps = self._run_batches(epoch)
        self.epochs_done += 1
        self.seconds += time.perf_counter() - started
        report = EpochReport(epoch=self.epochs_done, loss=loss, steps=steps)
        self.history.append(report)
        return report

    def _run_batches(self, epoch: int) -> tuple[float, int]:
        order = epoch_order(len(self.data.train), self.config.seed, epoch)
        batches = batch_slices(order, self.config.batch_size)
        if self.config.steps_per_epoch is not None:
            batches = batches[: self.config.steps_per_epoch]
        self.model.train()
        total_loss, seen = 0.0, 0
        for step, indices in enumerate(batches, start=1):
            loss = self._train_step(indices)
            total_loss += loss * len(indices)
            seen += len(indices)
            advance()
            self.observer.on_step(epoch + 1, step, len(batches), loss)
        return total_loss / seen, len(batches)

    def _train_step(self, indices: torch.Tensor) -> float:
        inputs, labels = self._batch(self.data.train, indices)
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.model(inputs), labels)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return float(loss.item())

    def _batch(self, split: ImageSplit, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.data.model_input(split.images[indices], self.spec.input_shape)
        return inputs.to(self.device), split.labels[indices].to(self.device)

    def steps_until(self, epochs: int) -> int:
        """The training steps from `epochs_done` up to `epochs` (a progress bar's total)."""
        return max(epochs - self.epochs_done, 0) * steps_per_epoch(self.config, self.data)

    def evaluate(self, split: ImageSplit) -> Evaluation:
        """Accuracy and mean loss over a whole split, in eval mode."""
        return evaluate_model(self.model, self.data, split, self.spec.input_shape, self.device)

    def probe_logits(self) -> torch.Tensor:
        """The logits of the fixed probe batch, computed on CPU in eval mode.

        Always on CPU, so that a fixture saved from a GPU run can be checked bit for
        bit on any machine: load it, compute on the CPU, compare.
        """
        return compute_probe_logits(self.model, self.data, self.spec.input_shape)

    def restore(self, model_state: Mapping[str, Any], optimizer_state: Mapping[str, Any], epochs_done: int) -> None:
        """Continue from a saved state, as if this run had trained `epochs_done` epochs."""
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(dict(optimizer_state))
        self.epochs_done = epochs_done


def evaluate_model(
    model: nn.Module,
    data: ReferenceData,
    split: ImageSplit,
    input_shape: tuple[int, int, int],
    device: torch.device | str = "cpu",
) -> Evaluation:
    """Accuracy and mean cross-entropy of `model` (already on `device`) over `split`.

    The loss is the exactly rounded sum of the per-example losses (`math.fsum`), so
    that it does not depend on the order in which they are added.
    """
    device = torch.device(device)
    correct, losses = 0, []
    with _evaluating(model, device):
        for indices in torch.split(torch.arange(len(split)), EVAL_BATCH_SIZE):
            inputs = data.model_input(split.images[indices], input_shape).to(device)
            labels = split.labels[indices].to(device)
            logits = model(inputs)
            losses += F.cross_entropy(logits, labels, reduction="none").tolist()
            correct += int((logits.argmax(dim=1) == labels).sum())
            advance(len(indices))
    size = len(split)
    return Evaluation(accuracy=correct / size, loss=math.fsum(losses) / size, examples=size)


def compute_probe_logits(
    model: nn.Module,
    data: ReferenceData,
    input_shape: tuple[int, int, int],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The probe batch's logits for `model`, computed on `device` in eval mode.

    Returned on the CPU as float32. `model` is left where it is: a copy is moved.
    """
    device = torch.device(device)
    inputs, _ = data.probe_batch(input_shape)
    moved = _on_device(model, device)
    with _evaluating(moved, device):
        logits: torch.Tensor = moved(inputs.to(device))
    return logits.detach().to("cpu", torch.float32).contiguous()


def _on_device(model: nn.Module, device: torch.device) -> nn.Module:
    tensors = list(model.parameters()) + list(model.buffers())
    if all(_same_device(tensor.device, device) for tensor in tensors):
        return model
    return copy.deepcopy(model).to(device)


def _same_device(a: torch.device, b: torch.device) -> bool:
    # `cuda` and `cuda:0` name the same device when 0 is the current one.
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


@contextlib.contextmanager
def _evaluating(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode, no grad, deterministic kernels; on the CPU, one thread.

    CPU kernels split their sums differently for different thread counts, so logits
    computed with 2 threads can differ in the last bit from those computed with 16.
    With one thread, the recorded numbers are reproduced bit for bit on any machine
    with the same torch build and CPU type, whatever its core count.
    """
    with reproducible(device, 0), _eval_mode(model), _one_thread_on_cpu(device):
        yield


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def train(config: TrainConfig, data: ReferenceData, observer: TrainingObserver | None = None) -> TrainingRun:
    """Build the model and optimizer from the config and train every epoch."""
    run = TrainingRun(config, data, observer or SilentObserver())
    run.train_until(config.epochs)
    return run
