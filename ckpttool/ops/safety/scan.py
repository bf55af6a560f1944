"""Security report: every global a file's pickles name, how each is used, a verdict.

The verdict (`ckpttool.pickle.judge`) answers one question: can loading this file with
`pickle.load` or `torch.load(weights_only=False)` run something not known to be
harmless? `safe`, `needs-allowlist`, `unknown-call` or `dangerous`, each with one
meaning. Apart from it, `weights_only` says what `torch.load(weights_only=True)` does
with the file (`ckpttool.pickle.weightsonly`): a refusal there is reported, not danger.
`__torch__` classes are unknown calls (torch.jit.load runs their code) until allowed;
in a TorchScript archive, allowing its top-level class trusts them all (`judge.TorchScript`).

Every pickle is scanned: all `.pkl` records of an archive under any root, every
stacked pickle of the legacy formats, every pickle concatenated in a raw file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ckpttool.formatnames import ScannedFormat
from ckpttool.formats import FormatName, OpenedFile, open_path
from ckpttool.formats.format import Found
from ckpttool.ops.safety.sparse import invalid_sparse, rebuilds_sparse
from ckpttool.pickle.judge import (
    DANGEROUS,
    NEEDS_ALLOWLIST,
    SAFE,
    UNKNOWN_CALL,
    Judgement,
    Verdict,
    judge,
)
from ckpttool.pickle.judge import GlobalJudgement as GlobalReport
from ckpttool.pickle.weightsonly import WeightsOnly, emulate, not_applicable

__all__ = [
    "DANGEROUS",
    "NEEDS_ALLOWLIST",
    "SAFE",
    "UNKNOWN_CALL",
    "Danger",
    "FileScan",
    "GlobalReport",
    "danger",
    "scan_file",
    "scan_opened",
]


@dataclass
class FileScan:
    path: str
    format: ScannedFormat
    verdict: Verdict
    pickles: int
    globals: list[GlobalReport] = field(default_factory=list)
    weights_only: WeightsOnly = field(default_factory=lambda: WeightsOnly("loads"))
    allowlist: str | None = None  # for needs-allowlist and unknown-call files
    imports: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    allowed: dict[str, str] = field(default_factory=dict)  # names this run allowed that the file uses, and where
    notes: list[str] = field(default_factory=list)  # facts that are no finding (a zip with no pickle)


def scan_file(path: str, allow: Mapping[str, str] | None = None) -> FileScan:
    """Scan one file or checkpoint folder; raises CkptError only when it is not a checkpoint at all.

    `allow` maps `module.name` to where the user allowed it (`--allow`, a pyproject.toml):
    those names count as vetted for this scan.
    """
    return scan_opened(open_path(path), allow)


def scan_opened(opened: OpenedFile, allow: Mapping[str, str] | None = None) -> FileScan:
    """`scan_file` of a file a command has already opened: its pickles as decoded there."""
    collected = opened.pickles()
    judgement = judge((d for _, d in collected.pickles), allow, collected.torchscript)
    sparse = _invalid_sparse(opened, collected)
    problems = collected.problems + judgement.problems + sparse
    verdict = DANGEROUS if problems else judgement.verdict
    weights_only = _weights_only(collected, judgement, sparse[0] if sparse else None, opened.path)
    # No allowlist makes torch.load(weights_only=True) read TorchScript: no line to print.
    loadable = collected.torchscript is None and verdict in (NEEDS_ALLOWLIST, UNKNOWN_CALL)
    allowlist = weights_only.allowlist if loadable else None
    allowed = {g.qualname: g.allowed_by for g in judgement.globals if g.allowed_by}
    return FileScan(
        opened.path,
        collected.format or opened.kind(),
        verdict,
        len(collected.pickles),
        judgement.globals,
        weights_only,
        allowlist,
        weights_only.imports if allowlist else [],
        problems,
        allowed,
        notes=collected.notes,
    )


@dataclass(frozen=True)
class Danger:
    """Why a scan calls a file dangerous, as every command that refuses or warns says it."""

    globals: list[str]  # the dangerous globals' names
    reasons: list[str]  # the scan's problems, then `name: reason` for each dangerous global

    @property
    def named(self) -> str:
        """The dangerous globals, or the first problem when no global is one."""
        return f"dangerous globals {', '.join(self.globals)}" if self.globals else self.reasons[0]


def danger(result: FileScan) -> Danger | None:
    """The one summary of a dangerous scan (None when the verdict is another)."""
    if result.verdict != DANGEROUS:
        return None
    named = [g for g in result.globals if g.verdict == DANGEROUS]
    reasons = result.problems + [f"{g.qualname}: {g.reason}" for g in named]
    return Danger([g.qualname for g in named], reasons)


# -- what torch.load(weights_only=True) does ------------------------------------------------

# DeepSpeed folders: every rank file is a torch.save zip that DeepSpeed torch.loads.
_TORCH_LOADS: frozenset[FormatName] = frozenset(
    {"torch-zip", "torch-legacy", "torch-legacy-tar", "sharded-bin", "deepspeed"}
)
_SAFETENSORS: frozenset[FormatName] = frozenset({"safetensors", "sharded-safetensors"})
# The pickles torch.load unpickles, by the names the readers give them: a zip's
# `<root>/data.pkl`, the stacked pickles of a legacy file, the members of a legacy tar.
# Anything else the scan found by content is scanned but never read by torch.load.
_TORCH_PICKLE = re.compile(
    r"[^/]+/data\.pkl|magic number|protocol version|sys_info|main pickle|storage keys|pickle"
    r"|(storages|tensors): (count|header \d+|views)"
)


def _invalid_sparse(opened: OpenedFile, collected: Found) -> list[str]:
    if collected.format not in _TORCH_LOADS or not rebuilds_sparse(d for _, d in collected.pickles):
        return []
    return invalid_sparse(opened)


def _weights_only(collected: Found, judgement: Judgement, invalid: str | None, path: str) -> WeightsOnly:
    fmt = collected.format
    if fmt in _SAFETENSORS:
        return not_applicable("safetensors: read it with safetensors.torch.load_file, not torch.load")
    if fmt == "dcp":  # no add_safe_globals line helps: dcp.load unpickles without weights_only
        return not_applicable(
            "a DCP folder: dcp.load reads .metadata with pickle.load and non-tensor entries with "
            "torch.load(weights_only=False); no allowlist applies"
        )
    if fmt == "pt2":  # no add_safe_globals line helps either
        return not_applicable(
            "a torch.export archive: torch.export.load unpickles pickled payloads with weights_only=False, "
            "and sample inputs so when weights_only fails; no allowlist applies"
        )
    if fmt == "torchscript":
        refusal: str | None = "a TorchScript archive, which torch.load(weights_only=True) refuses"
    elif fmt == "torch-legacy-tar":  # refused before any of its pickles is read
        refusal = "a legacy .tar checkpoint, which torch.load(weights_only=True) refuses"
    elif fmt not in _TORCH_LOADS:
        refusal = f"not a file torch.save writes ({fmt}): torch.load reads zip archives and legacy files only"
    else:
        refusal = None
    pickles = [d for name, d in collected.pickles if refusal or _torch_reads(name)]
    unreadable = next((p for p in collected.problems if p.startswith(_UNREADABLE)), None)
    if refusal is None and unreadable is not None and fmt in _TORCH_LOADS:
        # ckpttool's reader refuses what torch's refuses (a byteorder record torch does not know)
        refusal = f"torch.load fails on it too: {unreadable.removeprefix(_UNREADABLE)}"
    if refusal is None and fmt in _TORCH_LOADS and path.endswith(_SAFETENSORS_SUFFIX):
        refusal = (
            f"named {_SAFETENSORS_SUFFIX}: torch.load(path) passes it to safetensors, which cannot read a "
            f"{fmt} file; torch.load of the open file or of the file renamed reads it"
        )
    if refusal is None and fmt == "torch-legacy" and any(g.qualname == _UNTYPED for d in pickles for g in d.globals):
        # torch's legacy reader asks a storage's class for its dtype (`storage_type.dtype`),
        # which UntypedStorage, the class of storages no typed class names, has not
        refusal = (
            "a legacy file with an UntypedStorage (float8, uint16-64, complex32 tensors): torch.load "
            "fails on it (AttributeError), weights_only or not"
        )
    return emulate(pickles, judgement, refusal or invalid)


_UNTYPED = "torch.storage.UntypedStorage"
_SAFETENSORS_SUFFIX = ".safetensors"  # torch.load passes a path so named to safetensors, whatever its bytes
_UNREADABLE = "unreadable: "  # how `Found.guard` names a reader's refusal


def _torch_reads(name: str) -> bool:
    base = name.split(":", 1)[1] if ":" in name and not name.startswith(("storages:", "tensors:")) else name
    return _TORCH_PICKLE.fullmatch(base.removesuffix(" (up to the error)")) is not None
