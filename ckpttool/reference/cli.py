"""`ckpttool reference`: train the tutorial models and write checkpoint fixtures.

Importing this module does not import torch (the main command group adds this
group at start-up); the training modules are imported when a command runs.
Errors are `CkptError`s, which the main group turns into exit code 2 and one line.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ckpttool.cli.common import notices_on_stderr, output_options
from ckpttool.reference.choices import (
    DATASET_NAMES,
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    DEVICE_CHOICES,
    MODEL_NAMES,
    OPTIMIZER_NAMES,
    STYLE_NAMES,
)

if TYPE_CHECKING:
    from ckpttool.reference.train import TrainConfig


@click.group(name="reference")
def reference() -> None:
    """Train the tutorial models, produce checkpoint fixtures, check them with ckpttool."""


@reference.command(name="train")
@click.option(
    "--model",
    type=click.Choice(MODEL_NAMES),
    default="cnn",
    show_default=True,
    help="Which tutorial model to train.",
)
@click.option(
    "--dataset",
    type=click.Choice(DATASET_NAMES),
    default="digits",
    show_default=True,
    help="digits needs no download; the others are torchvision's, read from --data-root.",
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder holding torchvision's dataset files.",
)
@click.option("--download", is_flag=True, help="Let torchvision download a missing dataset.")
@click.option("--epochs", type=click.IntRange(min=1), help="Default: the model's (above).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Default: the model's.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Default: the model's.")
@click.option(
    "--optimizer",
    type=click.Choice(OPTIMIZER_NAMES),
    default="adam",
    show_default=True,
    help="sgd uses momentum 0.9.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seeds the initial weights, data order and dropout.",
)
@click.option(
    "--device",
    type=click.Choice(DEVICE_CHOICES),
    default="auto",
    show_default=True,
    help="auto: CUDA when available. Bit-exact repeatability holds on CPU.",
)
@click.option(
    "--steps-per-epoch",
    type=click.IntRange(min=0),
    help="Cap optimizer steps per epoch; 0: the whole training split. Default: the model's.",
)
@click.option(
    "--styles",
    default="all",
    show_default=True,
    help=f"Comma list of save styles: {', '.join(STYLE_NAMES)}. vgg16 files are "
    "~0.5 GB each (~1.6 GB with Adam state), ~6.4 GB for all styles.",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Also save {'state_dict','optimizer'} every N epochs during training; 0: never.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the fixtures and manifest.json (created; same-named files replaced, others kept). "
    "The set lands whole at the end; a stopped or failed run leaves the folder as it was.",
)
@output_options(("table", "json"))
def train_command(
    model: str,
    dataset: str,
    data_root: Path | None,
    download: bool,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    optimizer: str,
    seed: int,
    device: str,
    steps_per_epoch: int | None,
    styles: str,
    checkpoint_every: int,
    out_dir: Path,
    fmt: str,
) -> None:
    """Train a tutorial model on real data and write it in every way people save one.

    \b
    Model defaults (epochs, batch size, lr, steps per epoch; 28x28x1 or 32x32x3 input):
      nn, cnn, neural-network, cifar10-net   10 epochs, 64, 1e-3, whole split
      vgg16                                  1 epoch, 32, 1e-4, 8 steps
      resnet34                               3 epochs, 64, 1e-3, whole split
    """
    notices_on_stderr()
    from ckpttool.reference.data import load_dataset
    from ckpttool.reference.fixtures import build_fixtures, summarize
    from ckpttool.reference.progress import ProgressReporter, bars_on
    from ckpttool.reference.report import train_json, train_table
    from ckpttool.reference.saving import parse_styles
    from ckpttool.render import output_width

    started = time.perf_counter()
    chosen_styles = parse_styles(styles)
    config = _config(model, epochs, batch_size, lr, optimizer, seed, device, steps_per_epoch)
    data = load_dataset(dataset, data_root, download)
    progress = ProgressReporter(config.epochs, lambda line: click.echo(line, err=True))
    with bars_on(sys.stderr if sys.stderr.isatty() else None):
        fixtures = build_fixtures(config, data, out_dir, chosen_styles, checkpoint_every, progress)
    summary = summarize(fixtures, total_seconds=time.perf_counter() - started)
    click.echo(train_json(summary) if fmt == "json" else train_table(summary, output_width()))


def _config(
    model: str,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    optimizer: str,
    seed: int,
    device: str,
    steps_per_epoch: int | None,
) -> TrainConfig:
    from ckpttool.reference.train import TrainConfig, resolve_device

    config = TrainConfig.for_model(
        model,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        seed=seed,
        device=resolve_device(device),
        steps_per_epoch=steps_per_epoch or None,
    )
    if steps_per_epoch == 0:
        config = replace(config, steps_per_epoch=None)
    return config


@reference.command(name="check")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--device",
    type=click.Choice(DEVICE_CHOICES),
    default="auto",
    show_default=True,
    help="Where the reloaded models are evaluated; auto: CUDA when available.",
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder holding torchvision's dataset files (not needed for digits).",
)
@click.option(
    "--resume-epochs",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Length of the resume proof's training run (on CPU); 0 skips the proof.",
)
@click.option(
    "--exact",
    is_flag=True,
    help="Demand bit-exact numbers even where this machine's fingerprint differs from the recorded one.",
)
@click.option(
    "--atol",
    type=click.FloatRange(min=0),
    default=DEFAULT_ATOL,
    show_default=True,
    help="Absolute tolerance for logits and losses where the fingerprints differ.",
)
@click.option(
    "--rtol",
    type=click.FloatRange(min=0),
    default=DEFAULT_RTOL,
    show_default=True,
    help="Relative tolerance for logits and losses where the fingerprints differ.",
)
@output_options(("table", "json"))
@click.pass_context
def check_command(
    ctx: click.Context,
    directory: Path,
    device: str,
    data_root: Path | None,
    resume_epochs: int,
    exact: bool,
    atol: float,
    rtol: float,
    fmt: str,
) -> None:
    """Reload every fixture in DIRECTORY through ckpttool and compare with its manifest.

    \b
    Each file listed in manifest.json: sha256 and size, the format, weights root and
    storage locations ckpttool reads; its weights, read without running code from it
    and loaded strictly into a fresh model, must give the recorded accuracy and loss
    on both splits and the probe logits. So must the files that convert (safetensors,
    pth) and remap --device cpu make from it. Bit-exact where this machine's
    fingerprint (torch build, device, CPU capability and model, oneDNN, BLAS, the
    variables that steer them) equals the one the manifest recorded; otherwise
    logits and losses within --atol + --rtol and accuracy within one example. The
    report says which and why. Then the resume proof: train, save
    {'model','optimizer'}, read it back through ckpttool, train on; the weights
    must equal a straight run, bit for bit (on CPU, in this process).

    Exit 0 when every check holds, 1 when one fails (each failure is listed with its
    file), 2 when the folder or its manifest cannot be read.
    """
    from ckpttool.errors import EXIT_FINDINGS, EXIT_OK
    from ckpttool.reference.check import check_fixtures
    from ckpttool.reference.checkreport import check_json, check_table
    from ckpttool.reference.compare import Tolerance
    from ckpttool.reference.progress import bars_on
    from ckpttool.render import output_width

    tolerance = Tolerance(atol=atol, rtol=rtol)
    with bars_on(sys.stderr if sys.stderr.isatty() else None):
        report = check_fixtures(directory, device, data_root, resume_epochs, tolerance, exact)
    click.echo(check_json(report) if fmt == "json" else check_table(report, output_width()))
    ctx.exit(EXIT_OK if report.ok else EXIT_FINDINGS)
