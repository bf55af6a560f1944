"""Hostile inputs beyond FORMATS.md's list: other ways to reach code or hide a payload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.builders import (
    Op,
    Raw,
    ZipMember,
    call_global,
    empty_legacy_tar,
    float_tensor,
    global_ref,
    shell_touch,
    state_dict_pickle,
    storage_bytes,
    torch_zip,
    torch_zip_members,
    value,
    whole,
    zip_bytes,
)
from support.hostile import (
    FileWriter,
    assert_dangerous,
    assert_inspect_harmless,
    assert_no_crash,
    assert_not_run,
    global_entry,
    scan,
)
from support.payloads import inner_system_pickle

WEIGHT = float_tensor("w", "0", 2, 3)


def rebuild_from_type(func: bytes, marker: Path) -> bytes:
    """torch._tensor._rebuild_from_type_v2(func, torch.Tensor, args, state) runs func(*args).

    It is on torch's allowlist, so once a user allowlists `func`, torch.load calls it.
    """
    args = value((Raw(func), Raw(global_ref("torch", "Tensor")), (shell_touch(marker),), {}))
    return whole(global_ref("torch._tensor", "_rebuild_from_type_v2") + args + Op.REDUCE)


@pytest.mark.slow
@pytest.mark.parametrize(
    "gadget",
    [("imaplib", "IMAP4_stream"), ("doctest", "debug_script"), ("builtins", "exec")],
    ids=".".join,
)
def test_a_gadget_called_through_an_allowlisted_function_is_dangerous(
    write: FileWriter, marker: Path, gadget: tuple[str, str]
) -> None:
    path = write("rebuild.pt", torch_zip(rebuild_from_type(global_ref(*gadget), marker)))
    report = assert_dangerous(path, ".".join(gadget))
    assert report["allowlist"] is None, "the scan must never ask to allowlist a callable it will see called"
    assert_inspect_harmless(path)
    assert_not_run(marker)


def test_an_allowlisted_function_given_an_allowlisted_callable_is_safe(write: FileWriter, marker: Path) -> None:
    """The control: torch itself writes _rebuild_from_type_v2 with a rebuild function."""
    path = write("rebuild.pt", torch_zip(rebuild_from_type(global_ref("builtins", "set"), marker)))
    outcome = scan(path)
    assert outcome.exit_code == 0
    assert global_entry(outcome.json()["files"][0], "builtins.set")["verdict"] == "safe"


@pytest.mark.parametrize("evil_first", [True, False])
def test_a_second_data_pkl_record_is_an_anomaly(write: FileWriter, marker: Path, evil_first: bool) -> None:
    """Readers disagree on duplicate names (miniz takes the first, Python's zipfile the last)."""
    good = torch_zip_members(state_dict_pickle([WEIGHT]), {"0": storage_bytes(WEIGHT)})
    evil = ZipMember("archive/data.pkl", inner_system_pickle(marker))
    path = write("dup.pt", zip_bytes([evil, *good] if evil_first else [*good, evil]))
    report = assert_dangerous(path)
    assert any("twice" in p for p in report["problems"])
    assert_inspect_harmless(path)
    assert_not_run(marker)


@pytest.mark.parametrize("member", ["pickle", "storages", "tensors"])
def test_payloads_in_the_legacy_tar_format(write: FileWriter, marker: Path, member: str) -> None:
    path = write("old.tar", empty_legacy_tar(**{member: inner_system_pickle(marker)}))
    assert_dangerous(path, "posix.system")
    assert_inspect_harmless(path)
    assert_not_run(marker)


def test_a_payload_shard_of_a_sharded_checkpoint(tmp_path: Path, marker: Path) -> None:
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": "evil.bin"}}))
    (tmp_path / "evil.bin").write_bytes(inner_system_pickle(marker))
    assert_dangerous(tmp_path, "posix.system")
    assert_not_run(marker)


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["itself", "each_other"])
def test_an_index_that_refers_back_to_itself_terminates(tmp_path: Path, shape: str) -> None:
    first, second = tmp_path / "a.index.json", tmp_path / "b.index.json"
    first.write_text(json.dumps({"weight_map": {"w": first.name if shape == "itself" else second.name}}))
    second.write_text(json.dumps({"weight_map": {"w": first.name}}))
    outcome = scan(first)
    assert_no_crash(outcome)
    assert outcome.exit_code in (1, 2)
    assert len(outcome.stdout) < 1 << 16


def test_calling_the_result_of_an_allowlisted_call_is_dangerous(write: FileWriter, marker: Path) -> None:
    """torch.FloatStorage() is allowlisted; calling what it returned is a computed callable."""
    storage = call_global("torch", "FloatStorage")
    path = write("storage_call.pt", torch_zip(whole(storage + value((shell_touch(marker),)) + Op.REDUCE)))
    report = assert_dangerous(path)
    assert report["problems"]
    assert_not_run(marker)
