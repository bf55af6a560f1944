"""Where a DeepSpeed ZeRO checkpoint's files are, and which layouts are refused.

`engine.save_checkpoint(RUN, tag)` writes `RUN/latest` (the tag, as text) and `RUN/TAG/`:
`mp_rank_00_model_states.pt` (ZeRO-1/2) or one `zero_pp_rank_R_mp_rank_00_model_states.pt`
per data-parallel rank (ZeRO-3), and one `[bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt`
per rank. Without ZeRO (stage 0), `mp_rank_00_model_states.pt` is all there is: it holds
the optimizer's state too. A run folder, a tag folder or the `latest` file all name the
same checkpoint.

Only data parallelism is read: tensor or pipeline parallel files (`mp_rank_01`,
`layer_*`) and MoE expert files (`expp_rank_*`) are refused, as are missing ranks.
Nothing in the folder is run; its `zero_to_fp32.py` is only ever read as text by `scan`.
"""

from __future__ import annotations

import os
import re
from contextlib import suppress
from dataclasses import dataclass

from ckpttool.errors import CkptError, FileAccessError, FormatError

LATEST = "latest"
MAX_TAG = 4096
OPTIM_FILE = re.compile(r"(bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt")
MODEL_FILE = re.compile(r"(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_model_states\.pt")
REFUSED = (
    (re.compile(r"layer_\d+-model_\d+-model_states\.pt"), "pipeline-parallel layer files (layer_*)"),
    (re.compile(r"expp_rank_\d+.*\.pt"), "MoE expert files (expp_rank_*)"),
)
SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")
STAGE0_FILE = "mp_rank_00_model_states.pt"


@dataclass(frozen=True)
class ZeroFiles:
    """A tag folder's files: model states and optimizer states, by data-parallel rank."""

    folder: str
    model: list[str]  # one file (ZeRO-0/1/2) or one per rank (ZeRO-3)
    optim: list[str]  # one per rank, rank order; none without ZeRO

    @property
    def world(self) -> int:
        return len(self.optim)


def tag_folder(path: str) -> str | None:
    """The tag folder `path` names (itself, through `latest`), or None when it is no ZeRO checkpoint."""
    if os.path.isdir(path):
        if _holds_zero_files(path):
            return path
        latest = os.path.join(path, LATEST)
        return _through_latest(latest) if os.path.isfile(latest) else None
    if os.path.basename(path) == LATEST and os.path.isfile(path):
        return _through_latest(path)
    return None


def _through_latest(latest: str) -> str | None:
    try:
        with open(latest, "rb") as f:
            text = f.read(MAX_TAG + 1)
    except OSError:
        return None
    try:
        tag = text.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not tag or len(text) > MAX_TAG or "/" in tag or "\\" in tag or tag in (".", ".."):
        return None
    folder = os.path.join(os.path.dirname(latest), tag)
    return folder if os.path.isdir(folder) and _holds_zero_files(folder) else None


def _holds_zero_files(folder: str) -> bool:
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    return any(OPTIM_FILE.fullmatch(n) or MODEL_FILE.fullmatch(n) for n in names)


def zero_files(folder: str) -> ZeroFiles:
    """The tag folder's rank files, refused (FormatError) unless they make one data-parallel run."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise FileAccessError(f"cannot list: {exc.strerror}", path=folder) from None
    for pattern, what in REFUSED:
        found = [n for n in names if pattern.fullmatch(n)]
        if found:
            raise FormatError(f"DeepSpeed checkpoint with {what}, e.g. {found[0]}: not read", path=folder)
    optim = {m.group(0): m for n in names if (m := OPTIM_FILE.fullmatch(n))}
    model = {m.group(0): m for n in names if (m := MODEL_FILE.fullmatch(n))}
    mp_ranks = {int(m.group(3)) for m in optim.values()} | {int(m.group(2)) for m in model.values()}
    if mp_ranks - {0}:
        raise FormatError(
            f"DeepSpeed checkpoint with tensor or pipeline parallel ranks (mp_rank_{max(mp_ranks):02d}): not read",
            path=folder,
        )
    join = os.path.join
    if not optim and list(model) == [STAGE0_FILE]:
        return ZeroFiles(folder, [join(folder, STAGE0_FILE)], [])  # no ZeRO: one file holds it all
    optim_ranks = _by_rank(folder, {int(m.group(2)): n for n, m in optim.items()}, "optimizer state")
    kinds = {m.group(1) is not None for m in optim.values()}
    if len(kinds) > 1:
        raise FormatError("both bf16_ and plain optimizer state files: two saves in one folder", path=folder)
    zero3 = {int(m.group(1)): n for n, m in model.items() if m.group(1) is not None}
    plain = [n for n, m in model.items() if m.group(1) is None]
    if zero3:
        model_files = _by_rank(folder, zero3, "model state")
        if len(model_files) != len(optim_ranks):
            raise FormatError(
                f"{len(model_files)} model state files for {len(optim_ranks)} optimizer state files", path=folder
            )
    elif plain:
        model_files = plain
    else:
        raise FormatError("no mp_rank_00_model_states.pt beside the optimizer states", path=folder)
    return ZeroFiles(folder, [join(folder, n) for n in model_files], [join(folder, n) for n in optim_ranks])


def rank_files(folder: str) -> tuple[list[str], str | None]:
    """The files a scan of the tag folder decodes, and why ckpttool cannot read them as one
    run (None when it can): the rank files, or every `.pt` file of a layout it refuses."""
    try:
        files = zero_files(folder)
    except CkptError as exc:
        with suppress(OSError):
            return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".pt")], exc.message
        return [], exc.message
    return files.model + files.optim, None


def _by_rank(folder: str, files: dict[int, str], what: str) -> list[str]:
    if not files:
        raise FormatError(f"no {what} files (*_optim_states.pt): not a complete ZeRO checkpoint", path=folder)
    missing = sorted(set(range(max(files) + 1)) - set(files))
    if missing:
        shown = ", ".join(str(r) for r in missing[:5])
        raise FormatError(f"{what} files of rank(s) {shown} are missing (found {len(files)})", path=folder)
    return [files[r] for r in range(len(files))]


def scripts_beside(folder: str) -> list[str]:
    """DeepSpeed's consolidation scripts copied into the run folder (the tag folder's parent)."""
    run = os.path.dirname(os.path.abspath(folder))
    return [os.path.join(run, s) for s in SCRIPTS if os.path.isfile(os.path.join(run, s))]
