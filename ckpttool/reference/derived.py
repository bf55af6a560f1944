"""The files ckpttool makes from a fixture, which must hold the same model.

`convert` writes the weights as safetensors and as a plain torch state_dict;
`remap --device cpu` rewrites where every storage of a torch file is restored to.
Each is made the way the CLI makes it, into a scratch folder, and then checked like
the fixture itself: what ckpttool writes has to work as a model, not only read back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ckpttool.formats import LEGACY, TORCH_ZIP
from ckpttool.ops.convert import ConvertOptions, ConvertTarget, convert
from ckpttool.ops.rewrite import parse_mapping, remap
from ckpttool.reference.manifest import FileRecord

# The fixture as it is, and each file made from it, in the order they are checked.
AS_SAVED = "file"
TO_SAFETENSORS = "safetensors"
TO_PTH = "pth"
REMAP_CPU = "remap-cpu"
VARIANTS: tuple[str, ...] = (AS_SAVED, TO_SAFETENSORS, TO_PTH, REMAP_CPU)


@dataclass(frozen=True)
class Derivation:
    """One way of making a file from a fixture, and how to read the weights back."""

    variant: str
    suffix: str
    make: Callable[[Path, Path], None]
    # Whether the fixture's format can be made into this variant at all.
    applies: Callable[[FileRecord], bool]
    # Where the weights are in the file made: convert writes a bare state_dict,
    # remap keeps the fixture's layout.
    weights_root: Callable[[FileRecord], str]
    # The storage locations the file made must name (None: not checked).
    locations: tuple[str, ...] | None = None


def _convert_to(target: ConvertTarget) -> Callable[[Path, Path], None]:
    def make(source: Path, destination: Path) -> None:
        # No root given: convert finds the weights as it would for a user.
        convert(str(source), str(destination), ConvertOptions(to=target, force=True))

    return make


def _remap_to_cpu(source: Path, destination: Path) -> None:
    remap(str(source), str(destination), parse_mapping("cpu", ()), force=True)


def _any_format(_record: FileRecord) -> bool:
    return True


def _torch_format(record: FileRecord) -> bool:
    return record.format in (TORCH_ZIP, LEGACY)


def _bare(_record: FileRecord) -> str:
    return ""


def _as_recorded(record: FileRecord) -> str:
    return record.weights_root


DERIVATIONS: tuple[Derivation, ...] = (
    Derivation(TO_SAFETENSORS, ".safetensors", _convert_to("safetensors"), _any_format, _bare),
    Derivation(TO_PTH, ".pth", _convert_to("pth"), _any_format, _bare),
    Derivation(REMAP_CPU, "", _remap_to_cpu, _torch_format, _as_recorded, ("cpu",)),
)


def derived_path(workdir: Path, derivation: Derivation, record: FileRecord) -> Path:
    """Where the file made from `record` goes: a folder per variant, the fixture's name."""
    return workdir / derivation.variant / f"{record.path}{derivation.suffix}"


def make_derived(workdir: Path, derivation: Derivation, source: Path, record: FileRecord) -> Path:
    destination = derived_path(workdir, derivation, record)
    destination.parent.mkdir(parents=True, exist_ok=True)
    derivation.make(source, destination)
    return destination
