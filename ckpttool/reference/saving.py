"""Every way the tutorials save a model, written with fixed file names.

- `state-dict`: `state_dict.pth`, `model.state_dict()`
- `whole-model`: `model.pth`, the pickled `nn.Module`
- `state-dict-optimizer`: `checkpoint.pth.tar`, `{'state_dict', 'optimizer'}`; also
  `checkpoint_epochNNN.pth.tar` every few epochs during training
- `model-optimizer`: `model_optimizer.pt`, `{'model', 'optimizer'}`
- `general-checkpoint`: `general_checkpoint.tar`,
  `{'epoch', 'model_state_dict', 'optimizer_state_dict', 'loss'}`
- `safetensors`: `model.safetensors`, the state_dict with `{'format': 'pt'}` metadata

Tensors are saved where they live: a run on a GPU gives files whose storages say
`cuda`, like the files people bring from GPU machines. `located_as` writes that
location from any machine (see `located`). Each file is written to a temporary name
in the destination folder and renamed into place; `build_fixtures` points these
functions at a staging folder and moves the whole set into place at the end (see
`staging`).

Sizes: a state_dict is 4 bytes per parameter; files that add Adam's state are 3x
that, SGD's 2x. vgg16 (134M parameters) gives ~537 MB per weights-only file and
~1.6 GB per file with Adam state, ~6.4 GB for all styles; resnet34 (21M) ~85 MB and
~256 MB. `--styles` picks fewer.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ckpttool.errors import UsageError
from ckpttool.formatnames import SAFETENSORS, TORCH_ZIP, FormatName
from ckpttool.reference.choices import STYLE_NAMES
from ckpttool.reference.located import host_side_state, saved_as_located, storage_locations
from ckpttool.reference.train import TrainingRun


@dataclass(frozen=True)
class SavedFile:
    """A file just written: its name in the folder, style, format and weights root."""

    path: Path
    style: str
    format: FormatName
    weights_root: str
    epoch: int
    # Every storage location written into the file, sorted; none for safetensors.
    locations: tuple[str, ...] = ()


@dataclass(frozen=True)
class SaveStyle:
    name: str
    file_name: str
    format: FormatName
    weights_root: str
    payload: Callable[[TrainingRun], Any]


def _optimizer_state(run: TrainingRun) -> dict[str, Any]:
    return run.optimizer.state_dict()


def _last_loss(run: TrainingRun) -> float:
    return run.history[-1].loss if run.history else float("nan")


SAVE_STYLES: dict[str, SaveStyle] = {
    style.name: style
    for style in (
        SaveStyle("state-dict", "state_dict.pth", TORCH_ZIP, "", lambda run: run.model.state_dict()),
        SaveStyle("whole-model", "model.pth", TORCH_ZIP, "", lambda run: run.model),
        SaveStyle(
            "state-dict-optimizer",
            "checkpoint.pth.tar",
            TORCH_ZIP,
            "state_dict",
            lambda run: {"state_dict": run.model.state_dict(), "optimizer": _optimizer_state(run)},
        ),
        SaveStyle(
            "model-optimizer",
            "model_optimizer.pt",
            TORCH_ZIP,
            "model",
            lambda run: {"model": run.model.state_dict(), "optimizer": _optimizer_state(run)},
        ),
        SaveStyle(
            "general-checkpoint",
            "general_checkpoint.tar",
            TORCH_ZIP,
            "model_state_dict",
            lambda run: {
                "epoch": run.epochs_done,
                "model_state_dict": run.model.state_dict(),
                "optimizer_state_dict": _optimizer_state(run),
                "loss": _last_loss(run),
            },
        ),
        SaveStyle("safetensors", "model.safetensors", SAFETENSORS, "", lambda run: run.model.state_dict()),
    )
}


def parse_styles(text: str) -> tuple[str, ...]:
    """`all` or a comma list of style names, in the order the styles are written."""
    if text.strip() == "all":
        return STYLE_NAMES
    asked = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(asked - set(STYLE_NAMES))
    if unknown or not asked:
        raise UsageError(
            f"unknown save style {', '.join(unknown) or repr(text)}; "
            f"give 'all' or a comma list of: {', '.join(STYLE_NAMES)}"
        )
    return tuple(name for name in STYLE_NAMES if name in asked)


def periodic_file_name(epoch: int) -> str:
    return f"checkpoint_epoch{epoch:03d}.pth.tar"


def save_style(
    run: TrainingRun,
    style_name: str,
    directory: Path,
    file_name: str | None = None,
    located_as: str | None = None,
) -> SavedFile:
    """Write `run`'s current state in one style into `directory`.

    `located_as` (e.g. `cuda:0`) records the storages on that device, as a save from
    a GPU run does, whatever device the run is on.
    """
    style = SAVE_STYLES[style_name]
    path = Path(directory) / (file_name or style.file_name)
    payload = style.payload(run)
    locations: tuple[str, ...] = ()
    if style.format == SAFETENSORS:
        _write_atomically(path, lambda temp: save_file(_contiguous(payload), temp, metadata={"format": "pt"}))
    else:
        with _located(run, located_as):
            locations = tuple(storage_locations(payload))
            _write_atomically(path, lambda temp: torch.save(payload, temp))
    return SavedFile(path, style.name, style.format, style.weights_root, run.epochs_done, locations)


def save_styles(
    run: TrainingRun, styles: Iterable[str], directory: Path, located_as: str | None = None
) -> list[SavedFile]:
    return [save_style(run, name, directory, located_as=located_as) for name in styles]


def save_periodic_checkpoint(run: TrainingRun, directory: Path, located_as: str | None = None) -> SavedFile:
    """The tutorial's `{'state_dict','optimizer'}` written every few epochs."""
    return save_style(run, "state-dict-optimizer", directory, periodic_file_name(run.epochs_done), located_as)


@contextlib.contextmanager
def _located(run: TrainingRun, located_as: str | None) -> Iterator[None]:
    if located_as is None:
        yield
        return
    with saved_as_located(located_as, keep=host_side_state(run.optimizer)):
        yield


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses non-contiguous tensors; a state_dict may hold a view.
    return {key: tensor.contiguous() for key, tensor in state.items()}


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Write under the final name in a private folder beside `path`, then move it.

    The final name matters: torch names a zip archive's root folder after the file
    it writes, and fixtures should look like files saved straight to their names.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".partial-", dir=path.parent) as folder:
        partial = Path(folder) / path.name
        # Created first so that it gets a new file's usual mode (from the umask), which
        # is kept below: a writer that makes its own temporary file may narrow it.
        partial.touch()
        mode = partial.stat().st_mode & 0o777
        write(str(partial))
        os.chmod(partial, mode)
        os.replace(partial, path)
