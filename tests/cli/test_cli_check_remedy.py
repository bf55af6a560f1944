"""`check`'s safety findings say what scan says about torch.load(weights_only=True), and
show what to paste (`--allow NAME`, the add_safe_globals line) whole, at any width.

Ground truth: torch.load(weights_only=True) itself, after running the printed line.
"""

from __future__ import annotations

import collections
import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from support.cli import cli_json

Cli = Callable[..., Result]
TRAINMOD = "import enum\n\n\nclass Phase(enum.Enum):\n    TRAIN = 'train'\n"


@pytest.fixture
def trainmod(tmp_path: Path) -> Iterator[Any]:
    """A module of the training code, importable only inside this fixture."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "trainmod.py").write_text(TRAINMOD)
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("trainmod")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("trainmod", None)
        torch.serialization.clear_safe_globals()


def small_state_dict() -> dict[str, torch.Tensor]:
    return torch.nn.Linear(3, 2).state_dict()


def loads_after_running(lines: list[str], path: Path) -> bool:
    """Run the printed imports and add_safe_globals line, then torch.load(weights_only=True)."""
    torch.serialization.clear_safe_globals()
    exec("\n".join(["import torch", *lines]), {})  # noqa: S102 - the line the report tells users to run
    try:
        torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - torch's refusal, whatever its type
        return False
    finally:
        torch.serialization.clear_safe_globals()
    return True


def safety_finding(cli: Cli, path: Path, *args: str) -> dict[str, Any]:
    (checked,) = cli_json(cli("check", path, "--allow", "trainmod.Phase", "--format", "json", *args))["files"]
    (finding,) = [f for f in checked["findings"] if f["check"] == "safety"]
    assert isinstance(finding, dict)
    return finding


@pytest.mark.parametrize("with_defaultdict", [True, False])
def test_check_says_what_the_allowlist_line_does(
    cli: Cli, tmp_path: Path, trainmod: Any, with_defaultdict: bool
) -> None:
    content: dict[str, Any] = {"model": small_state_dict(), "phase": trainmod.Phase.TRAIN}
    if with_defaultdict:  # torch refuses SETITEMS on a defaultdict, whatever is allowlisted
        content["counts"] = collections.defaultdict(list, {"a": [1]})
    path = tmp_path / "train.pth"
    torch.save(content, path)
    finding = safety_finding(cli, path)
    loads = loads_after_running(finding["remedy"]["lines"], path)
    assert loads is not with_defaultdict  # the ground truth: the line is enough only without the defaultdict
    (scanned,) = cli_json(cli("scan", path, "--allow", "trainmod.Phase", "--format", "json"))["files"]
    assert scanned["weights_only"]["result"] == ("loads-after-allowlist" if loads else "refused")
    assert finding["severity"] == "warning"
    if loads:
        assert finding["message"].startswith("to load with torch.load(weights_only=True): ")
        assert finding["remedy"]["label"] == "to load with torch.load(weights_only=True):"
    else:
        assert "still refuses the file" in finding["message"] and "defaultdict" in finding["message"]
        assert "needs" not in finding["message"]
    assert finding["remedy"]["lines"][-1] == scanned["allowlist"]


@pytest.mark.parametrize("columns", ["40", "80"])
def test_table_shows_the_allow_option_whole(cli: Cli, tmp_path: Path, trainmod: Any, columns: str) -> None:
    path = tmp_path / "train.pth"
    torch.save({"model": small_state_dict(), "phase": trainmod.Phase.TRAIN}, path)
    from click.testing import CliRunner

    from ckpttool.cli import main

    result = CliRunner().invoke(main, ["check", str(path)], env={"COLUMNS": columns})
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert "    --allow trainmod.Phase" in lines
    # What it says to paste works: the same check with that option passes.
    assert cli("check", path, "--allow", "trainmod.Phase").exit_code == 0


@pytest.mark.slow
def test_cpu_only_remedy_is_whole_at_80_columns(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The remap command `check --cpu-only` prints is whole at 80 columns (shell
    continuations), the same in JSON's `remedy`, and running it gives a file that
    torch.load restores to cpu."""
    import shlex
    import shutil

    from click.testing import CliRunner

    from ckpttool.cli import main

    # A path a terminal line holds (a longer one goes on a line of its own, whole).
    folder = tmp_path / "runs" / "resnet-cifar10-from-a-gpu-node" / "checkpoints"
    folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    source = folder.relative_to(tmp_path) / "cnn_state_dict_cuda0.pth"
    shutil.copy(Path(__file__).parents[2] / "fixtures" / "files" / source.name, source)
    (checked,) = cli_json(cli("check", source, "--cpu-only", "--format", "json"))["files"]
    (finding,) = checked["findings"]
    (command,) = finding["remedy"]["lines"]
    result = CliRunner().invoke(main, ["check", str(source), "--cpu-only"], env={"COLUMNS": "80"})
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    start = lines.index(finding["remedy"]["label"]) + 1
    printed = " ".join(line.strip().removesuffix(" \\") for line in lines[start:])
    assert shlex.split(printed) == shlex.split(command)
    out = Path("cpu.pth")
    args = [str(out) if word == "OUT" else word for word in shlex.split(command)[1:]]
    assert cli(*args).exit_code == 0
    expected = torch.load(source, map_location="cpu", weights_only=True)
    restored = torch.load(out, weights_only=True)  # no map_location: where the file says
    assert {t.device.type for t in restored.values()} == {"cpu"}
    assert all(torch.equal(restored[k], v) for k, v in expected.items())
