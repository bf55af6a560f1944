"""Hostile DCP folders, built opcode by opcode: nothing runs, under any command.

`dcp.load` reads `.metadata` with plain `pickle.load` and every non-tensor entry of the
data files with `torch.load(weights_only=False)`; both are places a payload can sit.
Each payload would only create the test's marker file; every command is run on each
folder and the marker must never appear. scan and check name the verdict.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from support.builders import (
    Op,
    call_global,
    global_ref,
    reduce_pickle,
    shell_touch,
    text,
    torch_zip,
    value,
    whole,
)
from support.cli import cli_json

MD = "torch.distributed.checkpoint.metadata"


def _instance(module: str, name: str, fields: dict[str, bytes]) -> bytes:
    """How DCP's dataclasses pickle: the class, NEWOBJ with no arguments, BUILD with its fields."""
    state = Op.EMPTY_DICT + Op.MARK + b"".join(text(k) + v for k, v in fields.items()) + Op.SETITEMS
    return global_ref(module, name) + Op.EMPTY_TUPLE + Op.NEWOBJ + state + Op.BUILD


def _metadata(**fields: bytes) -> bytes:
    """A DCP Metadata with no items and the given fields (opcodes) on top."""
    base = {"state_dict_metadata": value({}), "planner_data": value(None), "storage_data": value({})}
    return whole(_instance(MD, "Metadata", {**base, **fields}))


def _system(marker: Path) -> bytes:
    return reduce_pickle("os", "system", shell_touch(marker))


def _foreign_class(marker: Path) -> bytes:
    """A class DCP never writes, instantiated and given state in place of an item."""
    item = _instance("mylib.checkpointing", "Settings", {"path": text(str(marker))})
    return _metadata(state_dict_metadata=Op.EMPTY_DICT + text("w") + item + Op.SETITEM)


def _nested_gadget(marker: Path) -> bytes:
    """Well-formed DCP metadata, a posix.system call inside its StorageMeta's checkpoint_id."""
    gadget = call_global("posix", "system", shell_touch(marker))
    storage_meta = _instance(MD, "StorageMeta", {"checkpoint_id": gadget, "save_id": text("x")})
    return _metadata(storage_meta=storage_meta)


METADATA: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "os.system REDUCE": (_system, "os.system"),
    "a class DCP never writes": (_foreign_class, "mylib.checkpointing.Settings"),
    "a gadget inside StorageMeta": (_nested_gadget, "posix.system"),
}


def _all_commands(cli: Callable[..., Result], folder: Path, other: Path, out: Path) -> dict[str, Result]:
    return {
        "inspect": cli("inspect", folder, "--all"),
        "stats": cli("inspect", folder, "--stats"),
        "scan": cli("scan", folder, "--format", "json"),
        "check": cli("check", folder),
        "diff": cli("diff", folder, other),
        "convert": cli("convert", folder, out),
        "optimizer": cli("optimizer", folder),
    }


@pytest.mark.parametrize("case", list(METADATA))
def test_hostile_metadata_runs_nothing(
    dcp_world1: Path, cli: Callable[..., Result], tmp_path: Path, marker: Path, case: str
) -> None:
    build, named = METADATA[case]
    folder = Path(shutil.copytree(dcp_world1, tmp_path / "hostile"))
    (folder / ".metadata").write_bytes(build(marker))
    out = tmp_path / "out.safetensors"
    results = _all_commands(cli, folder, dcp_world1, out)
    assert not marker.exists()
    assert not out.exists()
    (scanned,) = cli_json(results["scan"])["files"]
    assert (results["scan"].exit_code, scanned["format"], scanned["verdict"]) == (1, "dcp", "dangerous")
    assert named in {f"{g['module']}.{g['name']}" for g in scanned["globals"]}
    assert results["check"].exit_code == 1
    for command in ("inspect", "stats", "diff", "optimizer"):
        assert results[command].exit_code == 2, command
        (line,) = results[command].stderr.splitlines()
        assert "not torch.distributed.checkpoint metadata" in line and named in line, line
    assert results["convert"].exit_code in (1, 2)


def test_a_foreign_class_is_named_with_its_own_verdict(
    dcp_world1: Path, cli: Callable[..., Result], tmp_path: Path, marker: Path
) -> None:
    """Only instantiated, the class itself needs an allowlist; the scan fails closed all the
    same, because without DCP metadata the data files' pickles cannot be found."""
    folder = Path(shutil.copytree(dcp_world1, tmp_path / "hostile"))
    (folder / ".metadata").write_bytes(_foreign_class(marker))
    (scanned,) = cli_json(cli("scan", folder, "--format", "json"))["files"]
    verdicts = {f"{g['module']}.{g['name']}": g["verdict"] for g in scanned["globals"]}
    assert verdicts["mylib.checkpointing.Settings"] == "needs-allowlist"
    assert any("data files cannot be scanned" in p for p in scanned["problems"])


ENTRIES: dict[str, Callable[[Path], bytes]] = {
    # a torch.save archive whose pickle calls os.system
    "zip": lambda marker: torch_zip(_system(marker)),
    # no zip: torch.load's legacy path unpickles it, pickle after pickle; the payload second
    "stacked pickles": lambda marker: whole(value(1)) + _system(marker),
}


def _hostile_entry(folder: Path, marker: Path, kind: str) -> None:
    """`epoch` replaced by a payload appended to the data file: what dcp.load would
    torch.load(weights_only=False)."""
    data = folder / "__0_0.distcp"
    archive = ENTRIES[kind](marker)
    offset = data.stat().st_size
    data.write_bytes(data.read_bytes() + archive)
    metadata = pickle.loads((folder / ".metadata").read_bytes())  # our own file, written by the fixture
    for index, info in metadata.storage_data.items():
        if index.fqn == "epoch":
            info.offset, info.length = offset, len(archive)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(ENTRIES))
def test_hostile_non_tensor_entry_runs_nothing(
    dcp_world1: Path, cli: Callable[..., Result], tmp_path: Path, marker: Path, kind: str
) -> None:
    folder = Path(shutil.copytree(dcp_world1, tmp_path / "hostile"))
    _hostile_entry(folder, marker, kind)
    out = tmp_path / "out.safetensors"
    results = _all_commands(cli, folder, dcp_world1, out)
    assert not marker.exists()
    (scanned,) = cli_json(results["scan"])["files"]
    assert (results["scan"].exit_code, scanned["verdict"]) == (1, "dangerous")
    system = [g for g in scanned["globals"] if (g["module"], g["name"]) == ("os", "system")]
    assert [g["verdict"] for g in system] == ["dangerous"]
    assert results["check"].exit_code == 1
    if kind == "zip":  # read as the inert call it pickles; the folder is named dangerous
        inspected = results["inspect"]
        assert inspected.exit_code == 0 and "os.system" in inspected.stdout and "DANGEROUS" in inspected.stdout
    else:  # no torch.save archive where .metadata says one is
        assert results["inspect"].exit_code == 2
