"""Package faces that import what they name only when it is first used (PEP 562).

`import ckpttool` and each `ckpttool.ops` job package stay cheap: a command's start-up
pays only for the modules it reaches, never for torch or every other job.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` resolving each exported name from its module (relative to `package`)."""

    def resolve(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module, package), name)

    return resolve
