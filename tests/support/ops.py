"""What the convert, remap and stats tests share: fixture groups, output readers, and the
guarantees every write makes (source untouched, nothing left behind on failure).

The ground truth itself comes from `support.groundtruth`; this module only decides which
fixtures each operation should accept and reads back what ckpttool wrote.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import struct
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from support.groundtruth import (
    COMMITTED_DIR,
    data_record_offsets,
    fixture_path,
    globals_of,
    load_fixture_index,
    tensors_equal,
)

TEMP_SUFFIX = ".ckpttool-tmp"
ALIASES_KEY = "ckpttool.aliases"

FIXTURES: list[dict[str, Any]] = load_fixture_index()
BY_NAME: dict[str, dict[str, Any]] = {record["name"]: record for record in FIXTURES}

# Why a fixture's weights cannot be converted at all, or not to safetensors. Everything
# else in the index must convert to both formats.
NO_WEIGHTS = {"raw_pickle_bin": "a raw pickle of plain values holds no tensors"}
NOT_DENSE = {"exotic_tensors": "sparse and quantized tensors have no dense byte layout"}
NO_SAFETENSORS_DTYPE = {
    "dtypes": "complex128 has no safetensors dtype",
    "big_endian_dtypes": "complex128 has no safetensors dtype",
}
CONVERT_REFUSED = {**NO_WEIGHTS, **NOT_DENSE}


def ids(records: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(record["name"]) for record in records]


def records_where(predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    return [record for record in FIXTURES if predicate(record)]


def convertible(to: str) -> list[dict[str, Any]]:
    refused = CONVERT_REFUSED | (NO_SAFETENSORS_DTYPE if to == "safetensors" else {})
    return records_where(lambda r: r["name"] not in refused)


# -- files and bytes ------------------------------------------------------------------------------


def sha256_tree(path: Path) -> dict[str, str]:
    """sha256 of a file, or of every file under a folder, keyed by relative path."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(path) if path.is_dir() else p.name): _sha256(p) for p in files}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def unchanged(*paths: Path) -> Iterator[None]:
    """Asserts that every path's bytes are the same after the block as before it,
    also when the block raises (failure paths must not touch the source either)."""
    before = [sha256_tree(p) for p in paths]
    try:
        yield
    finally:
        after = [sha256_tree(p) for p in paths]
        assert after == before, "the source's bytes changed"


@pytest.fixture(autouse=True)
def committed_fixtures_unchanged() -> Iterator[None]:
    """Every test leaves the committed fixtures byte for byte as they were."""
    with unchanged(COMMITTED_DIR):
        yield


def temp_files(folder: Path) -> list[str]:
    """ckpttool's hidden temporary outputs (`.NAME.*.ckpttool-tmp`) left in `folder`."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(TEMP_SUFFIX))


def assert_nothing_written(folder: Path, *destinations: Path) -> None:
    """After a failure: no destination, no shard or index beside it, no temporary file."""
    for destination in destinations:
        assert not destination.exists(), f"{destination.name} was left behind"
        stem = destination.name.split(".", 1)[0]
        strays = [p.name for p in Path(folder).iterdir() if p.name.startswith(f"{stem}-0")]
        assert not strays, f"shards left behind: {strays}"
        assert not Path(f"{destination}.index.json").exists()
    assert temp_files(folder) == []


def copy_fixture(record: Mapping[str, Any], folder: Path) -> Path:
    """A private copy of a fixture file (tests that damage or lock their source use it)."""
    source = fixture_path(record)
    copy = Path(folder) / source.name
    copy.write_bytes(source.read_bytes())
    return copy


def record_data_offset(path: Path, record: str = "data/0") -> int:
    """Offset of the first data byte of a zip checkpoint's record `*/<record>`."""
    return next(offset for name, offset in data_record_offsets(path) if name.endswith("/" + record))


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        value = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([value ^ 0xFF]))


# -- reading what ckpttool wrote ------------------------------------------------------------------


def torch_load_weights_only(path: Path, **kwargs: Any) -> Any:
    """`torch.load(weights_only=True)`: the promise `convert --to pth` makes about its output."""
    return torch.load(path, weights_only=True, **kwargs)  # noqa: TID251 - reading ckpttool's own output


def load_output(path: Path, to: str) -> dict[str, torch.Tensor]:
    if to == "safetensors":
        return load_file(path)
    loaded = torch_load_weights_only(path)
    assert isinstance(loaded, dict)
    return dict(loaded)


def safetensors_metadata(path: Path) -> dict[str, str]:
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def read_index(dst: Path) -> dict[str, Any]:
    index: dict[str, Any] = json.loads(Path(f"{dst}.index.json").read_text())
    return index


def load_sharded_output(dst: Path, to: str) -> dict[str, torch.Tensor]:
    """The union of the shards that `DST.index.json` names, each checked to hold its keys."""
    weight_map: dict[str, str] = read_index(dst)["weight_map"]
    merged: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        tensors = load_output(dst.parent / shard, to)
        assert {k for k, v in weight_map.items() if v == shard} == set(tensors)
        merged.update(tensors)
    return merged


def assert_same_tensors(
    actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], ordered: bool = False
) -> None:
    """Same keys (in the same order when `ordered`) and bit-identical tensors."""
    if ordered:
        assert list(actual) == list(expected)
    else:
        assert sorted(actual) == sorted(expected)
    different = [key for key in expected if not tensors_equal(actual[key], expected[key])]
    assert different == [], f"tensors differ from the ground truth: {different}"


def tied_groups(tensors: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Keys that name one tensor: the same view (offset, shape, stride, dtype) of one storage.

    Overlapping slices of one storage are not tied; only identical views are.
    """
    groups: dict[tuple[Any, ...], list[str]] = {}
    for key, tensor in tensors.items():
        view = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
            tensor.dtype,
        )
        groups.setdefault(view, []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1 and tensors[keys[0]].numel() > 0]


# -- zip records and temporary names --------------------------------------------------------------


def raw_records(path: Path) -> dict[str, bytes]:
    """Every record of a stored (uncompressed) zip checkpoint, keyed by its name without the
    archive's folder, read raw: no CRC check, since some fixtures carry zero CRCs on purpose."""
    raw = Path(path).read_bytes()
    records: dict[str, bytes] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name_length, extra_length = struct.unpack_from("<HH", raw, info.header_offset + 26)
            start = info.header_offset + 30 + name_length + extra_length
            records[info.filename.split("/", 1)[1]] = raw[start : start + info.file_size]
    return records


def record_bytes(path: Path) -> dict[str, bytes]:
    """Every `data/<key>` record of a zip checkpoint, keyed by `<key>`."""
    return {name.removeprefix("data/"): data for name, data in raw_records(path).items() if name.startswith("data/")}


def pickle_globals(pickle_bytes: bytes) -> set[str]:
    """`module.name` of every GLOBAL in a protocol 2 pickle, Python 2 names read as Python 3's
    (`__builtin__.set` and `builtins.set` are one class)."""
    return {name.replace("__builtin__.", "builtins.", 1) for name in globals_of(pickle_bytes)}


def expected_dst_temp_name(dst: Path, temp: str) -> bool:
    name = Path(temp).name
    return Path(temp).parent == dst.parent and name.startswith(f".{dst.name}.") and name.endswith(TEMP_SUFFIX)


# -- the CLI --------------------------------------------------------------------------------------


def run_ckpttool_process(
    args: Sequence[object], *, preexec: Callable[[], None] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m ckpttool ARGS` in a fresh interpreter; no .pyc writes (they would count
    against a file-size limit)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ckpttool", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        preexec_fn=preexec,  # only resource limits and signal dispositions
        env=env,
        cwd=cwd,
        check=False,
        timeout=120,
    )


@contextlib.contextmanager
def quiet_torch_notices() -> Iterator[None]:
    """torch's own deprecation notices while it rebuilds storages; not what is tested."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        yield


# -- a file scan calls dangerous ------------------------------------------------------------------


class ExecPayload:
    """Pickles as a call to builtins.exec that creates `marker`: what scan calls dangerous."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def dangerous_checkpoint(folder: Path, marker: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    weights = {"layer.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    path = folder / "dangerous.pt"
    torch.save({"state_dict": weights, "payload": ExecPayload(marker)}, path)
    return path, weights
