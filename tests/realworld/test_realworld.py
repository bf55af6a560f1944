"""Checkpoints saved the ways libraries save them: none is `dangerous`; the only
`unknown-call`s are true calls of unvetted callables (an enum member built from its
value), and those pass with --allow or the project's allowlist. The
`weights_only` answer is checked against torch.load in a subprocess that runs the printed
`add_safe_globals` line as a user would paste it, with the stand-in classes importable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from support.cli import cli_json

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
Cli = Callable[..., Result]
# Callables these files truly call that ckpttool does not vet: Cls('steps') builds an enum
# member (Enum.__new__ looks the value up). PosixPath('runs', 'exp1'), which joins strings,
# is vetted (every DCP .metadata holds one).
TRUE_UNKNOWN_CALLS = {"standins.IntervalStrategy", "standins.SchedulerType"}
NAMES = sorted(
    [
        "lightning.ckpt", "training_args.bin", "trainer_state_with_enum.pt", "numpy_config.pt",
        "fairseq_style.pt", "counters.pt", "empty_defaultdict.pt", "training_checkpoint.pth.tar",
        "whole_model.pt", "whole_model_legacy.pt", "paths_in_config.pt", "hf_training_args.bin",
        "whole_resnet_like.pt", "fabric_state.ckpt",
    ]
)  # fmt: skip


def _with_standins() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("realworld")
    subprocess.run(
        [sys.executable, str(HERE / "make_realworld.py"), str(out)], check=True, env=_with_standins(), timeout=120
    )
    assert sorted(p.name for p in out.iterdir()) == NAMES
    return out


def scanned(cli: Cli, path: Path, *options: str) -> tuple[Result, dict[str, Any]]:
    result = cli("scan", path, "--format", "json", *options)
    (report,) = cli_json(result)["files"]
    return result, report


def unknown_calls(report: dict[str, Any]) -> set[str]:
    return {f"{g['module']}.{g['name']}" for g in report["globals"] if g["verdict"] == "unknown-call"}


@pytest.mark.parametrize("name", NAMES)
def test_no_false_alarm(cli: Cli, folder: Path, name: str) -> None:
    result, report = scanned(cli, folder / name)
    assert report["verdict"] in ("safe", "needs-allowlist", "unknown-call"), report["problems"]
    assert report["problems"] == []
    assert unknown_calls(report) <= TRUE_UNKNOWN_CALLS
    assert result.exit_code == (1 if report["verdict"] == "unknown-call" else 0)


def test_a_path_of_strings_is_vetted(cli: Cli, folder: Path) -> None:
    result, report = scanned(cli, folder / "paths_in_config.pt")
    paths = [g for g in report["globals"] if (g["module"], g["name"]) == ("pathlib", "PosixPath")]
    assert [(g["uses"], g["verdict"]) for g in paths] == [(["call"], "needs-allowlist")]
    assert (result.exit_code, report["verdict"]) == (0, "needs-allowlist")


def test_trainers_training_args_need_only_an_allowlist(cli: Cli, folder: Path) -> None:
    """training_args.bin as transformers' Trainer writes it in every checkpoint-N/: its str enums
    are vetted, so the file passes `scan` and `check` (torch agrees it loads after the line:
    test_weights_only_answers_agree_with_torch)."""
    result, report = scanned(cli, folder / "hf_training_args.bin")
    assert (result.exit_code, report["verdict"], report["weights_only"]["result"]) == (
        0,
        "needs-allowlist",
        "loads-after-allowlist",
    )
    calls = {f"{g['module']}.{g['name']}": g["verdict"] for g in report["globals"] if "call" in g["uses"]}
    assert calls == {
        "transformers.trainer_utils.SchedulerType": "needs-allowlist",
        "transformers.training_args.OptimizerNames": "needs-allowlist",
        "transformers.trainer_utils.IntervalStrategy": "needs-allowlist",
        "transformers.trainer_utils.SaveStrategy": "needs-allowlist",
        "transformers.trainer_utils.HubStrategy": "needs-allowlist",
        "transformers.trainer_utils.FSDPOption": "needs-allowlist",
        "transformers.debug_utils.DebugOption": "needs-allowlist",
        "accelerate.utils.dataclasses.DistributedType": "needs-allowlist",
        "torch.device": "safe",
    }
    assert cli("check", folder / "hf_training_args.bin").exit_code == 0


def test_a_models_norm_layer_factory_is_no_call(cli: Cli, folder: Path) -> None:
    """torch.save(torchvision ResNet): it holds nn.BatchNorm2d, which nothing calls at load."""
    result, report = scanned(cli, folder / "whole_resnet_like.pt")
    (norm,) = [g for g in report["globals"] if g["name"] == "BatchNorm2d"]
    assert (norm["uses"], norm["verdict"]) == (["call", "instantiate"], "needs-allowlist")
    assert (result.exit_code, report["verdict"]) == (0, "needs-allowlist")


def test_fabrics_attribute_dict_is_a_dict(cli: Cli, folder: Path) -> None:
    """Fabric.save of an AttributeDict state: filled by SETITEMS, dict's own __setitem__."""
    result, report = scanned(cli, folder / "fabric_state.ckpt")
    (attrs,) = [g for g in report["globals"] if g["name"] == "AttributeDict"]
    assert (attrs["module"], attrs["uses"], attrs["verdict"]) == (
        "lightning.fabric.utilities.data",
        ["instantiate"],
        "needs-allowlist",
    )
    assert (result.exit_code, report["verdict"], report["weights_only"]["result"]) == (0, "needs-allowlist", "refused")


@pytest.mark.parametrize("name", ["training_args.bin", "trainer_state_with_enum.pt"])
def test_true_unknown_calls_pass_with_allow(cli: Cli, folder: Path, name: str) -> None:
    _, report = scanned(cli, folder / name)
    unknown = sorted(unknown_calls(report))
    assert unknown and report["verdict"] == "unknown-call"
    for g in report["globals"]:
        if g["verdict"] == "unknown-call":
            assert g["calls"] and all(c.startswith(f"{g['module']}.{g['name']}(") for c in g["calls"])
    allowed = [arg for name in unknown for arg in ("--allow", name)]
    result, after = scanned(cli, folder / name, *allowed)
    assert (result.exit_code, after["verdict"]) == (0, "needs-allowlist")
    assert after["allowed"] == dict.fromkeys(unknown, "--allow")


def test_the_project_allowlist_in_pyproject(cli: Cli, folder: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """[tool.ckpttool] allow of the nearest pyproject.toml, found from a subfolder."""
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    names = ", ".join(f'"{n}"' for n in sorted(TRUE_UNKNOWN_CALLS))
    (project / "pyproject.toml").write_text(f"[project]\nname = 'x'\n\n[tool.ckpttool]\nallow = [{names}]\n")
    monkeypatch.chdir(project / "sub")
    result, report = scanned(cli, folder / "training_args.bin")
    assert (result.exit_code, report["verdict"]) == (0, "needs-allowlist")
    source = str(project / "pyproject.toml")
    assert report["allowed"] == {"standins.IntervalStrategy": source, "standins.SchedulerType": source}
    checked = cli("check", folder / "training_args.bin")
    assert checked.exit_code == 0, checked.stdout


def test_check_fails_on_an_unknown_call_and_says_how_to_allow_it(cli: Cli, folder: Path) -> None:
    result = cli("check", folder / "trainer_state_with_enum.pt", "--format", "json")
    assert result.exit_code == 1
    (checked,) = cli_json(result)["files"]
    (finding,) = [f for f in checked["findings"] if f["check"] == "safety"]
    assert finding["severity"] == "error"
    assert "standins.IntervalStrategy('steps')" in finding["message"]
    assert "--allow standins.IntervalStrategy" in finding["message"]
    assert cli("check", folder / "trainer_state_with_enum.pt", "--allow", "standins.IntervalStrategy").exit_code == 0


def test_weights_only_answers_agree_with_torch(cli: Cli, folder: Path) -> None:
    reports = {name: scanned(cli, folder / name)[1] for name in NAMES}
    requests = [[str(folder / n), r["imports"], r["allowlist"]] for n, r in reports.items()]
    done = subprocess.run(
        [sys.executable, str(HERE / "check_weights_only.py")],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        env=_with_standins(),
        timeout=120,
        check=True,
    )
    truth = json.loads(done.stdout)
    for name, report in reports.items():
        said, torch_did = report["weights_only"]["result"], truth[str(folder / name)]
        assert (said == "loads") == (torch_did["as_is"] is None), (name, said, torch_did)
        if said == "loads-after-allowlist":
            assert torch_did["after_line"] is None, (name, report["allowlist"], torch_did)
        if said == "refused":
            assert torch_did["as_is"] is not None and torch_did["after_line"] is not None, (name, torch_did)
    # Every file that needs an allowlist or calls an unvetted callable prints a line, and
    # all but those torch refuses whatever is allowlisted load after it.
    refused = {n for n, r in reports.items() if r["weights_only"]["result"] == "refused"}
    # SETITEM on a defaultdict or on an AttributeDict; ('module', ...) ids
    assert refused == {"counters.pt", "fabric_state.ckpt", "whole_model_legacy.pt"}
    for name, report in reports.items():
        if report["verdict"] in ("needs-allowlist", "unknown-call"):
            assert report["allowlist"], name
