"""`ckpttool remap SRC DST --device cpu | --map FROM=TO`: reports, outputs and errors.

GPU-saved fixtures (`cuda:0`, `cuda:1`) are remapped on this CPU-only machine and the
result loaded with plain `torch.load`, no `map_location`. The library's behaviour in
depth is in tests/ops/test_remap.py and tests/ops/test_failures.py.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from conftest import cli_json
from groundtruth import assert_same_content, fixture_path, storage_locations, torch_load_trusted
from ops.support import (
    BY_NAME,
    assert_nothing_written,
    assert_one_error_line,
    committed_fixtures_unchanged,
    dangerous_checkpoint,
    quiet_torch_notices,
    temp_files,
    torch_load_weights_only,
    unchanged,
)

import ckpttool.ops.rewrite.remapping as remap_module

Cli = Callable[..., Result]
REPORT_FIELDS = {"schema_version", "source", "output", "storages", "changed", "verified", "verification", "notes"}

__all__ = ["committed_fixtures_unchanged"]  # autouse: the committed fixtures stay as they were


def fixture(name: str) -> Path:
    return fixture_path(BY_NAME[name])


def remap_json(cli: Cli, src: Path, dst: Path, *options: Any) -> dict[str, Any]:
    """`ckpttool remap --format json`, which must succeed and leave SRC as it was."""
    with unchanged(src):
        result = cli("remap", src, dst, "--format", "json", *options)
    assert result.exit_code == 0, result.stderr
    report: dict[str, Any] = cli_json(result)
    return report


def load_plain(path: Path) -> Any:
    """torch.load with no map_location (fixture classes importable, locations untouched)."""
    with quiet_torch_notices():
        return torch_load_trusted(path, map_location=None)


@pytest.mark.parametrize(
    ("name", "storages", "changed"),
    [
        ("cuda0_state_dict", 6, {"cuda:0 -> cpu": 6}),
        ("cuda1_state_dict", 4, {"cuda:1 -> cpu": 4}),
        ("cuda0_legacy_state_dict", 6, {"cuda:0 -> cpu": 6}),
        ("cuda0_whole_model", 6, {"cuda:0 -> cpu": 6}),
        # The model and Adam's moments on cuda:0; Adam's step counters already on cpu.
        ("cuda0_model_optimizer", None, None),
    ],
)
def test_gpu_checkpoint_to_cpu(
    cli: Cli, name: str, storages: int | None, changed: dict[str, int] | None, tmp_path: Path
) -> None:
    src, dst = fixture(name), tmp_path / "cpu.pt"
    if not torch.cuda.is_available():  # as on this test machine: the source does not load as it is
        with pytest.raises(RuntimeError, match="CUDA"):
            load_plain(src)
    report = remap_json(cli, src, dst, "--device", "cpu")

    assert set(report) == REPORT_FIELDS
    assert report["schema_version"] == 1
    assert (report["source"], report["output"], report["verified"]) == (str(src), str(dst), True)
    if storages is not None:
        assert (report["storages"], report["changed"]) == (storages, changed)
    else:
        assert list(report["changed"]) == ["cuda:0 -> cpu"]
        assert report["changed"]["cuda:0 -> cpu"] < report["storages"]
    assert zipfile.is_zipfile(dst)
    assert_same_content(load_plain(dst), torch_load_trusted(src, map_location="cpu"))


def test_state_dict_loads_with_weights_only_after_remap(cli: Cli, tmp_path: Path) -> None:
    # The everyday case: torch.load(path, weights_only=True), no map_location, no GPU.
    src, dst = fixture("cuda0_state_dict"), tmp_path / "cpu.pt"
    remap_json(cli, src, dst, "--device", "cpu")
    loaded = torch_load_weights_only(dst)
    assert all(t.device == torch.device("cpu") for t in loaded.values())
    assert_same_content(dict(loaded), dict(torch_load_trusted(src)))


def test_map_one_device_to_another(cli: Cli, tmp_path: Path) -> None:
    src, dst = fixture("cuda1_state_dict"), tmp_path / "gpu0.pt"
    report = remap_json(cli, src, dst, "--map", "cuda:1=cuda:0")
    assert report["changed"] == {"cuda:1 -> cuda:0": 4}
    assert storage_locations(dst) == {"cuda:0"}


def test_table_report(cli: Cli, tmp_path: Path) -> None:
    dst = tmp_path / "cpu.pt"
    result = cli("remap", fixture("cuda0_state_dict"), dst, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert lines["wrote"].strip() == str(dst)
    assert "cuda:0 -> cpu" in lines["remapped"]
    assert "verified" in lines


def test_cpu_checkpoint_has_nothing_to_change(cli: Cli, tmp_path: Path) -> None:
    src, dst = fixture("cnn_state_dict"), tmp_path / "cpu.pt"
    report = remap_json(cli, src, dst, "--device", "cpu")
    assert report["changed"] == {}
    assert_same_content(load_plain(dst), torch_load_trusted(src))


def test_legacy_input_gives_zip_output(cli: Cli, tmp_path: Path) -> None:
    src, dst = fixture("legacy_whole_model"), tmp_path / "zip.pt"
    assert not zipfile.is_zipfile(src)
    remap_json(cli, src, dst, "--device", "cpu")
    assert zipfile.is_zipfile(dst)
    assert_same_content(load_plain(dst), torch_load_trusted(src))


@pytest.mark.parametrize(
    ("options", "fragment"),
    [((), "--device"), (("--map", "cuda:1"), "cuda:1"), (("--map", "=cpu"), "=cpu")],
    ids=["no-target", "no-equals", "no-source"],
)
def test_bad_mapping_is_one_error_line(cli: Cli, options: tuple[str, ...], fragment: str, tmp_path: Path) -> None:
    dst = tmp_path / "cpu.pt"
    assert_one_error_line(cli("remap", fixture("cuda0_state_dict"), dst, *options), fragment)
    assert_nothing_written(tmp_path, dst)


@pytest.mark.parametrize("name", ["safetensors", "sharded_safetensors", "torchscript_scripted"])
def test_formats_without_locations_are_one_error_line(cli: Cli, name: str, tmp_path: Path) -> None:
    src, dst = fixture(name), tmp_path / "cpu.pt"
    assert_one_error_line(cli("remap", src, dst, "--device", "cpu"), str(src))
    assert_nothing_written(tmp_path, dst)


def test_existing_destination_needs_force(cli: Cli, tmp_path: Path) -> None:
    src, dst = fixture("cuda0_state_dict"), tmp_path / "cpu.pt"
    dst.write_bytes(b"keep me")
    assert_one_error_line(cli("remap", src, dst, "--device", "cpu"), str(dst), "--force")
    assert dst.read_bytes() == b"keep me"
    assert temp_files(tmp_path) == []
    remap_json(cli, src, dst, "--device", "cpu", "--force")
    assert storage_locations(dst) == {"cpu"}


def test_missing_source_is_one_error_line(cli: Cli, tmp_path: Path) -> None:
    src, dst = tmp_path / "missing.pt", tmp_path / "cpu.pt"
    assert_one_error_line(cli("remap", src, dst, "--device", "cpu"), str(src))
    assert_nothing_written(tmp_path, dst)


def test_verification_mismatch_exits_1(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # DESIGN.md: exit 1 is "the command ran and found something ... a verify mismatch".
    monkeypatch.setattr(remap_module, "equivalent", lambda a, b, location=None: False)
    dst = tmp_path / "cpu.pt"
    result = cli("remap", fixture("cuda0_state_dict"), dst, "--device", "cpu")
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert_nothing_written(tmp_path, dst)


def test_verification_mismatch_leaves_nothing(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remap_module, "equivalent", lambda a, b, location=None: False)
    dst = tmp_path / "cpu.pt"
    result = cli("remap", fixture("cuda0_state_dict"), dst, "--device", "cpu")
    assert result.exit_code != 0 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert_nothing_written(tmp_path, dst)


# -- --trust ------------------------------------------------------------------------------------------


def test_trust_remaps_through_torch(cli: Cli, tmp_path: Path) -> None:
    src, dst = fixture("cuda0_model_optimizer"), tmp_path / "cpu.pt"
    remap_json(cli, src, dst, "--device", "cpu", "--trust")
    assert storage_locations(dst) == {"cpu"}
    assert_same_content(load_plain(dst), torch_load_trusted(src))


def test_trust_refuses_a_dangerous_file(cli: Cli, tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    src, _ = dangerous_checkpoint(tmp_path, marker)
    dst = tmp_path / "cpu.pt"
    with unchanged(src):
        result = cli("remap", src, dst, "--device", "cpu", "--trust")
    assert_one_error_line(result, str(src), "dangerous", "--force")
    assert not marker.exists()
    assert_nothing_written(tmp_path, dst)


def test_trust_with_force_loads_a_dangerous_file(cli: Cli, tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    src, weights = dangerous_checkpoint(tmp_path, marker)
    dst = tmp_path / "cpu.pt"
    with unchanged(src):
        result = cli("remap", src, dst, "--device", "cpu", "--trust", "--force")
    assert result.exit_code == 0, result.stderr
    assert marker.exists()  # the user asked for torch.load(weights_only=False) by name
    marker.unlink()
    assert_same_content(torch_load_weights_only(dst)["state_dict"], weights)


def test_a_dangerous_file_is_refused_naming_its_globals(cli: Cli, tmp_path: Path) -> None:
    """The rewritten pickle would carry the payload on: exit 1, nothing written."""
    marker = tmp_path / "PAYLOAD_RAN"
    src, _ = dangerous_checkpoint(tmp_path, marker)
    dst = tmp_path / "cpu.pt"
    with unchanged(src):
        result = cli("remap", src, dst, "--device", "cpu")
    assert result.exit_code == 1, result.stderr
    assert result.stdout == ""
    assert re.fullmatch(
        rf"ckpttool: error: {re.escape(str(src))}: scan calls this file dangerous "
        r"\(dangerous globals builtins\.exec\); .*--force.*\n",
        result.stderr,
    ), result.stderr
    assert not dst.exists() and not marker.exists()


def test_force_remaps_a_dangerous_file_without_running_it(cli: Cli, tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    src, _ = dangerous_checkpoint(tmp_path, marker)
    dst = tmp_path / "cpu.pt"
    remap_json(cli, src, dst, "--device", "cpu", "--force")
    assert dst.exists() and not marker.exists()


def test_trust_when_torch_cannot_load_is_one_error_line(cli: Cli, tmp_path: Path) -> None:
    # __main__.CNN does not exist here, so torch.load fails: one `ckpttool: error:` line
    # naming the file, and no quiet fallback to the code-free rewrite.
    src, dst = fixture("cuda0_whole_model"), tmp_path / "cpu.pt"
    result = cli("remap", src, dst, "--device", "cpu", "--trust")
    assert_one_error_line(result, str(src))
    assert_nothing_written(tmp_path, dst)


# -- a file scan fails for an unknown call ---------------------------------------------------------

UNKNOWN_MODULE = "remap_payload_module"


def unknown_call_checkpoint(tmp_path: Path, marker: Path) -> Path:
    """A checkpoint whose pickle calls a function of a user's module (neither vetted nor a
    known gadget: scan says unknown-call) that creates `marker` when torch.load runs it."""
    package = tmp_path / "pkgs"
    package.mkdir()
    (package / f"{UNKNOWN_MODULE}.py").write_text("def touch(path):\n    open(path, 'w').close()\n    return 0\n")
    sys.path.insert(0, str(package))
    try:
        module = importlib.import_module(UNKNOWN_MODULE)

        class Call:
            def __reduce__(self) -> tuple[Any, tuple[str]]:
                return (module.touch, (str(marker),))

        src = tmp_path / "unknown.pt"
        torch.save({"weight": torch.ones(2, 3), "extra": Call()}, src)
    finally:
        sys.path.remove(str(package))
        sys.modules.pop(UNKNOWN_MODULE, None)
    return src


def test_an_unknown_call_file_is_refused_as_scan_fails_it(cli: Cli, tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    src = unknown_call_checkpoint(tmp_path, marker)
    scanned = cli("scan", src, "--format", "json")
    assert (scanned.exit_code, cli_json(scanned)["files"][0]["verdict"]) == (1, "unknown-call")
    dst = tmp_path / "cpu.pt"
    with unchanged(src):
        result = cli("remap", src, dst, "--device", "cpu")
    assert (result.exit_code, result.stdout) == (1, ""), result.stderr
    (line,) = result.stderr.splitlines()
    assert str(src) in line and f"{UNKNOWN_MODULE}.touch" in line and "--force" in line, line
    assert not dst.exists() and not marker.exists() and not temp_files(tmp_path)
    # The refusal is warranted: the naive loader runs the call.
    load = f"import torch; torch.load({str(src)!r}, weights_only=False)"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "pkgs")}
    subprocess.run([sys.executable, "-c", load], env=env, check=True, capture_output=True, timeout=120)
    assert marker.exists()


def test_an_unknown_call_file_is_rewritten_when_forced_or_allowed(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    src = unknown_call_checkpoint(tmp_path, marker)
    remap_json(cli, src, tmp_path / "forced.pt", "--device", "cpu", "--force")
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(f'[tool.ckpttool]\nallow = ["{UNKNOWN_MODULE}.touch"]\n')
    monkeypatch.chdir(project)
    remap_json(cli, src, tmp_path / "allowed.pt", "--device", "cpu")
    assert (tmp_path / "forced.pt").exists() and (tmp_path / "allowed.pt").exists() and not marker.exists()
