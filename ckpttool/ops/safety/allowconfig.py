"""The names a user allows for one run: `--allow MODULE.NAME` and a project's pyproject.toml.

```toml
[tool.ckpttool]
allow = ["mypackage.models.Net", "transformers.trainer_utils.IntervalStrategy"]
```

The pyproject.toml read is the one in the current directory or, failing that, the nearest
parent directory that has one (as pytest and ruff find theirs); one without a
`[tool.ckpttool]` table allows nothing. An allowed name counts as vetted for the scan: its
calls are no longer unknown. Known gadgets stay dangerous whatever is allowed.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

from ckpttool.errors import UsageError

ALLOW_FLAG = "--allow"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def check_name(name: str, where: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(f"{where}: {name!r} is not a MODULE.NAME such as mypackage.models.Net")
    return name


def find_pyproject(start: str | os.PathLike[str] = ".") -> Path | None:
    folder = Path(start).resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / "pyproject.toml"
        if path.is_file():
            return path
    return None


def project_allowlist(pyproject: Path) -> list[str]:
    """`[tool.ckpttool] allow` of one pyproject.toml (empty when it has none)."""
    try:
        with open(pyproject, "rb") as f:
            config = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{pyproject}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise UsageError(f"{pyproject}: cannot read it ({exc.strerror})") from None
    names = config.get("tool", {}).get("ckpttool", {}).get("allow", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UsageError(f"{pyproject}: [tool.ckpttool] allow must be a list of strings")
    return [check_name(n, f"{pyproject}: [tool.ckpttool] allow") for n in names]


def allowed_names(flags: Iterable[str], start: str | os.PathLike[str] = ".") -> dict[str, str]:
    """Every allowed name and where it was allowed: `--allow` first, then pyproject.toml."""
    allowed = {check_name(name, ALLOW_FLAG): ALLOW_FLAG for name in flags}
    pyproject = find_pyproject(start)
    if pyproject is not None:
        for name in project_allowlist(pyproject):
            allowed.setdefault(name, str(pyproject))
    return allowed
