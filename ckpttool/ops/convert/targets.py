"""What `convert` writes: the targets `--to` names, in one place."""

from __future__ import annotations

from typing import Final, Literal

ConvertTarget = Literal["safetensors", "pth", "dcp"]

SAFETENSORS: Final = "safetensors"
PTH: Final = "pth"
DCP: Final = "dcp"
TARGETS: Final[tuple[ConvertTarget, ...]] = (SAFETENSORS, PTH, DCP)


def default_target(dst: str) -> ConvertTarget:
    """The target a destination's name implies: safetensors for `*.safetensors`, else a torch `.pth`."""
    return SAFETENSORS if dst.endswith(".safetensors") else PTH
