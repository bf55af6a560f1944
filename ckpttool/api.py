"""The library's public functions, each what one `ckpttool` command does, returning data.

Nothing here prints or reads the environment, and nothing from a file is ever imported
or called. Every failure is a `CkptError` naming the file and the problem. Options
arguments default to `None`, meaning the command's defaults; `ckpttool/__init__.py`
re-exports these lazily, so `import ckpttool` stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ckpttool.ops.compare import CheckOptions, CheckReport, DiffOptions, DiffReport
    from ckpttool.ops.convert import ConvertOptions, ConvertReport
    from ckpttool.ops.rewrite import RemapReport


def convert(src: str, dst: str, options: ConvertOptions | None = None) -> ConvertReport:
    """Write the weights of `src` to `dst` (safetensors, `.pth` or DCP), verified before it lands.

    Without options the target follows the destination's name, as the command's does."""
    from ckpttool.ops.convert import ConvertOptions, default_target
    from ckpttool.ops.convert import convert as run

    return run(src, dst, options or ConvertOptions(to=default_target(dst)))


def diff(path_a: str, path_b: str, options: DiffOptions | None = None) -> DiffReport:
    """Two checkpoints of any formats compared key by key: keys, shapes, dtypes, values, entries."""
    from ckpttool.ops.compare import DiffOptions
    from ckpttool.ops.compare import diff as run

    return run(path_a, path_b, options or DiffOptions())


def check(path: str, options: CheckOptions | None = None) -> CheckReport:
    """Every finding about one file; an unreadable file is a report with a read error, not an exception."""
    return check_paths([path], options)[0]


def check_paths(paths: Sequence[str], options: CheckOptions | None = None) -> list[CheckReport]:
    """`check` of each path in order; the model or reference in the options is built once."""
    from ckpttool.ops.compare import CheckOptions
    from ckpttool.ops.compare import check_paths as run

    return run(paths, options or CheckOptions())


def remap(
    src: str,
    dst: str,
    device: str | None = None,
    maps: Sequence[str] = (),
    *,
    force: bool = False,
    trust: bool = False,
) -> RemapReport:
    """Rewrite the device every storage of `src` restores to (`device="cpu"`, or `maps=["cuda:1=cuda:0"]`)."""
    from ckpttool.ops.rewrite import parse_mapping
    from ckpttool.ops.rewrite import remap as run

    return run(src, dst, parse_mapping(device, tuple(maps)), force=force, trust=trust)
