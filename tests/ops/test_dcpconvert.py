"""`convert` into and out of DCP folders, against what torch.distributed.checkpoint itself loads.

The DCP checkpoints are real: written by `dcp.save` from 1 and 2 processes on gloo
(`dcp_make.py`: FSDP2-sharded parameters with uneven shards, a replicated DTensor, Adam
state, non-tensor entries). The ground truth is torch's own `dcp_to_torch_save` read
back with `torch.load`; every converted tensor must equal it (torch.equal, dtype too).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from ops.dcp_make import free_port
from ops.support import assert_nothing_written, temp_files
from safetensors.torch import load_file, save_file

from ckpttool.ops.convert import Ranks
from ckpttool.ops.convert.dcp.groups import groups
from ckpttool.ops.convert.dcp.meta import checked_torch_metadata

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MODEL_KEYS = ["0.weight", "0.bias", "2.weight"]


def _make_dcp(out: Path, world: int) -> Path:
    subprocess.run([sys.executable, str(HERE / "dcp_make.py"), str(out), str(world)], check=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def dcp_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("dcp")
    return {world: _make_dcp(base / f"world{world}", world) for world in (1, 2)}


def dcp_truth(folder: Path, tmp: Path) -> dict[str, Any]:
    """Everything DCP loads back, flattened to its own keys (torch's own reader: tests only)."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(folder, tmp / "truth.pt")
    flat, _ = flatten_state_dict(torch.load(tmp / "truth.pt", weights_only=False))
    return dict(flat)


def tensors_of(flat: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in flat.items() if isinstance(v, torch.Tensor) and k.startswith(prefix)}


def assert_equal_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key


@pytest.fixture
def run(cli: Callable[..., Result]) -> Callable[..., Result]:
    return cli


# -- out of DCP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2])
def test_dcp_to_safetensors_is_what_dcp_loads(
    dcp_dirs: dict[int, Path], tmp_path: Path, run: Callable[..., Result], world: int
) -> None:
    truth = dcp_truth(dcp_dirs[world], tmp_path)
    result = run("convert", dcp_dirs[world], tmp_path / "all.safetensors", "--root", "")
    assert result.exit_code == 0, result.stderr
    assert_equal_tensors(load_file(tmp_path / "all.safetensors"), tensors_of(truth))
    # By default the model's entry is the weights, under the model's own keys.
    assert run("convert", dcp_dirs[world], tmp_path / "model.safetensors").exit_code == 0
    model = load_file(tmp_path / "model.safetensors")
    assert sorted(model) == sorted(MODEL_KEYS)
    assert_equal_tensors(model, tensors_of(truth, "model."))


def test_dcp_to_sharded_safetensors_with_index(
    dcp_dirs: dict[int, Path], tmp_path: Path, run: Callable[..., Result]
) -> None:
    truth = tensors_of(dcp_truth(dcp_dirs[2], tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    result = run("convert", dcp_dirs[2], out / "model.safetensors", "--root", "", "--shard-size", "200B")
    assert result.exit_code == 0, result.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / s).exists() for s in shards)
    got: dict[str, torch.Tensor] = {}
    for shard in shards:
        part = load_file(out / shard)
        assert all(index["weight_map"][k] == shard for k in part)
        got.update(part)
    assert_equal_tensors(got, truth)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in truth.values())


def test_without_kernel_copies_chunks_are_copied_through_a_buffer(
    dcp_dirs: dict[int, Path], tmp_path: Path, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filesystems (or kernels) without copy_file_range between two files: the same output."""
    truth = tensors_of(dcp_truth(dcp_dirs[2], tmp_path))

    tried: list[int] = []

    def unsupported(*args: Any) -> int:
        tried.append(args[2])
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    result = run("convert", dcp_dirs[2], tmp_path / "all.safetensors", "--root", "")
    assert result.exit_code == 0, result.stderr
    assert tried  # the kernel copy was asked for, and refused
    assert_equal_tensors(load_file(tmp_path / "all.safetensors"), truth)


def test_dcp_to_pth_loads_weights_only(dcp_dirs: dict[int, Path], tmp_path: Path, run: Callable[..., Result]) -> None:
    truth = tensors_of(dcp_truth(dcp_dirs[2], tmp_path), "model.")
    result = run("convert", dcp_dirs[2], tmp_path / "model.pth", "--dtype", "bfloat16")
    assert result.exit_code == 0, result.stderr
    got = torch.load(tmp_path / "model.pth", weights_only=True)
    assert_equal_tensors(got, {k: v.to(torch.bfloat16) for k, v in truth.items()})


def test_dcp_root_and_rename(dcp_dirs: dict[int, Path], tmp_path: Path, run: Callable[..., Result]) -> None:
    truth = tensors_of(dcp_truth(dcp_dirs[1], tmp_path), "extra.")
    result = run("convert", dcp_dirs[1], tmp_path / "x.safetensors", "--root", "extra", "--rename", "^=e.")
    assert result.exit_code == 0, result.stderr
    assert_equal_tensors(load_file(tmp_path / "x.safetensors"), {f"e.{k}": v for k, v in truth.items()})


def test_dcp_optimizer_state_by_key_prefix(
    dcp_dirs: dict[int, Path], tmp_path: Path, run: Callable[..., Result]
) -> None:
    truth = tensors_of(dcp_truth(dcp_dirs[2], tmp_path), "optim.state.")
    assert any(k.endswith("exp_avg_sq") for k in truth)
    result = run("convert", dcp_dirs[2], tmp_path / "optim.pth", "--root", "optim.state")
    assert result.exit_code == 0, result.stderr
    assert_equal_tensors(torch.load(tmp_path / "optim.pth", weights_only=True), truth)


# -- into DCP --------------------------------------------------------------------------------------


def _source_state() -> dict[str, torch.Tensor]:
    base = torch.arange(48.0).reshape(6, 8)
    return {
        "enc.weight": torch.randn(6, 8),
        "enc.bias": torch.randn(6).to(torch.bfloat16),
        "view.t": base.t(),  # non-contiguous
        "ids": torch.arange(10, dtype=torch.int64),
        "flag": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5, dtype=torch.float16),
    }


def _dcp_load(folder: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch's own DCP loader over ckpttool's output (tests only)."""
    import torch.distributed.checkpoint as dcp

    state = {k: torch.empty_like(v.contiguous()) for k, v in like.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(folder), no_dist=True)
    return state


def _write_source(kind: str, source: dict[str, torch.Tensor], folder: Path) -> Path:
    """SRC in one of the ways people save weights."""
    src = folder / f"src.{kind}"
    if kind == "pt":
        torch.save({"state_dict": source, "epoch": 1}, src)
    elif kind == "legacy":
        torch.save(source, src, _use_new_zipfile_serialization=False)
    elif kind == "safetensors":
        save_file({k: v.contiguous() for k, v in source.items()}, src)
    else:  # sharded: two safetensors files and their index
        keys = sorted(source)
        names = {k: f"m-0000{1 + i % 2}-of-00002.safetensors" for i, k in enumerate(keys)}
        for name in set(names.values()):
            save_file({k: source[k].contiguous() for k in keys if names[k] == name}, folder / name)
        src = folder / "m.safetensors.index.json"
        src.write_text(json.dumps({"metadata": {}, "weight_map": names}))
    return src


@pytest.mark.parametrize("kind", ["pt", "legacy", "safetensors", "sharded"])
def test_to_dcp_round_trip(tmp_path: Path, run: Callable[..., Result], kind: str) -> None:
    source = _source_state()
    src = _write_source(kind, source, tmp_path)
    result = run("convert", src, tmp_path / "ckpt", "--to", "dcp")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "ckpt" / ".metadata").exists() and temp_files(tmp_path) == []
    assert_equal_tensors(_dcp_load(tmp_path / "ckpt", source), {k: v.contiguous() for k, v in source.items()})
    # ...and back out through ckpttool: the source again, tensor for tensor.
    assert run("convert", tmp_path / "ckpt", tmp_path / "back.safetensors").exit_code == 0
    assert_equal_tensors(load_file(tmp_path / "back.safetensors"), source)


def test_to_dcp_cast_and_force(tmp_path: Path, run: Callable[..., Result]) -> None:
    source = _source_state()
    torch.save(source, tmp_path / "src.pt")
    assert run("convert", tmp_path / "src.pt", tmp_path / "ckpt", "--to", "dcp").exit_code == 0
    again = run("convert", tmp_path / "src.pt", tmp_path / "ckpt", "--to", "dcp", "--dtype", "float16")
    assert again.exit_code == 2 and "exists" in again.stderr
    forced = run("convert", tmp_path / "src.pt", tmp_path / "ckpt", "--to", "dcp", "--dtype", "fp16", "--force")
    assert forced.exit_code == 0, forced.stderr
    want = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in source.items()}
    assert_equal_tensors(_dcp_load(tmp_path / "ckpt", want), {k: v.contiguous() for k, v in want.items()})
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "src.pt"]  # the replaced checkpoint is gone


def test_to_dcp_never_replaces_other_folders(tmp_path: Path, run: Callable[..., Result]) -> None:
    torch.save(_source_state(), tmp_path / "src.pt")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    result = run("convert", tmp_path / "src.pt", tmp_path / "photos", "--to", "dcp", "--force")
    assert result.exit_code == 2 and "not a DCP checkpoint" in result.stderr
    assert os.listdir(tmp_path / "photos") == ["a.jpg"]


def test_dcp_metadata_read_without_unpickling_equals_pickle(dcp_dirs: dict[int, Path]) -> None:
    folder = dcp_dirs[2]
    with open(folder / ".metadata", "rb") as f:
        truth = pickle.load(f)  # ground truth: torch's own file
    ours = checked_torch_metadata(str(folder))
    assert ours.state_dict_metadata == truth.state_dict_metadata
    assert ours.storage_data == truth.storage_data
    assert ours.planner_data == truth.planner_data


# -- damaged and hostile inputs ----------------------------------------------------------------------


def _copy(folder: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(folder, tmp / "copy"))


def test_missing_data_file(dcp_dirs: dict[int, Path], tmp_path: Path, run: Callable[..., Result]) -> None:
    copy = _copy(dcp_dirs[2], tmp_path)
    (copy / "__1_0.distcp").unlink()
    result = run("convert", copy, tmp_path / "m.safetensors")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "__1_0.distcp" in result.stderr and "missing" in result.stderr
    assert_nothing_written(tmp_path, tmp_path / "m.safetensors")


def test_truncated_data_file(dcp_dirs: dict[int, Path], tmp_path: Path, run: Callable[..., Result]) -> None:
    copy = _copy(dcp_dirs[2], tmp_path)
    data = (copy / "__0_0.distcp").read_bytes()
    (copy / "__0_0.distcp").write_bytes(data[: len(data) // 2])
    result = run("convert", copy, tmp_path / "m.pth")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "__0_0.distcp" in result.stderr and "truncated" in result.stderr
    assert_nothing_written(tmp_path, tmp_path / "m.pth")


def test_corrupt_chunk_is_one_line(dcp_dirs: dict[int, Path], tmp_path: Path, run: Callable[..., Result]) -> None:
    copy = _copy(dcp_dirs[1], tmp_path)
    where = next(i for k, i in checked_torch_metadata(str(copy)).storage_data.items() if k.fqn == "model.0.weight")
    data = bytearray((copy / where.relative_path).read_bytes())
    data[where.offset : where.offset + 64] = b"\0" * 64  # the chunk's zip header: the length is right, not the content
    (copy / where.relative_path).write_bytes(bytes(data))
    result = run("convert", copy, tmp_path / "m.safetensors", "--root", "")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "'model.0.weight'" in result.stderr
    assert_nothing_written(tmp_path, tmp_path / "m.safetensors")


def test_a_chunk_whose_bytes_changed_is_refused(
    dcp_dirs: dict[int, Path], tmp_path: Path, run: Callable[..., Result]
) -> None:
    """A row chunk is copied file to file unseen; its copy's CRC-32 then disagrees with the one
    torch.save recorded, and the chunk itself fails it: damaged input, nothing lands."""
    from ckpttool.formats.dcp import read_dcp_tensors
    from ckpttool.tensordata import direct_ranges

    copy = _copy(dcp_dirs[2], tmp_path)
    pieces = direct_ranges(read_dcp_tensors(str(copy))[1]["model.0.weight"])
    assert pieces is not None and len(pieces) == 2  # split by rows over both ranks: copied piece by piece
    with open(pieces[1].path, "r+b") as f:
        f.seek(pieces[1].offset)
        first = f.read(1)
        f.seek(pieces[1].offset)
        f.write(bytes([first[0] ^ 1]))
    result = run("convert", copy, tmp_path / "m.safetensors")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert "__1_0.distcp" in result.stderr and "CRC-32" in result.stderr and "model.0.weight" in result.stderr
    assert_nothing_written(tmp_path, tmp_path / "m.safetensors")


def test_metadata_disagreeing_with_data_files(
    dcp_dirs: dict[int, Path], tmp_path: Path, run: Callable[..., Result]
) -> None:
    copy = _copy(dcp_dirs[2], tmp_path)
    with open(copy / ".metadata", "rb") as f:
        metadata = pickle.load(f)  # torch's own file, to be altered as a stale or foreign .metadata would be
    metadata.state_dict_metadata["model.0.weight"].properties.dtype = torch.float64
    with open(copy / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    result = run("convert", copy, tmp_path / "m.safetensors")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "'model.0.weight'" in result.stderr
    assert_nothing_written(tmp_path, tmp_path / "m.safetensors")


def test_hostile_metadata_runs_nothing(tmp_path: Path, run: Callable[..., Result], marker: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    # GLOBAL os.system, the command, TUPLE1, REDUCE: what pickle.load would run.
    command = f"touch {marker}".encode()
    payload = b"\x80\x02cos\nsystem\nq\x00X" + len(command).to_bytes(4, "little") + command + b"\x85R."
    (folder / ".metadata").write_bytes(payload)
    result = run("convert", folder, tmp_path / "x.safetensors")
    assert result.exit_code == 2 and "os.system" in result.stderr
    assert not marker.exists()
    assert_nothing_written(tmp_path, tmp_path / "x.safetensors")


def test_index_naming_absent_shard(tmp_path: Path, run: Callable[..., Result]) -> None:
    save_file({"a": torch.ones(2)}, tmp_path / "m-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "m-00001-of-00002.safetensors", "b": "m-00002-of-00002.safetensors"}}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(index))
    result = run("convert", tmp_path / "m.safetensors.index.json", tmp_path / "ckpt", "--to", "dcp")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "m-00002-of-00002.safetensors" in result.stderr
    assert not (tmp_path / "ckpt").exists() and temp_files(tmp_path) == []


def test_to_dcp_refuses_options_it_cannot_honour(tmp_path: Path, run: Callable[..., Result]) -> None:
    torch.save(_source_state(), tmp_path / "src.pt")
    result = run("convert", tmp_path / "src.pt", tmp_path / "ckpt", "--to", "dcp", "--shard-size", "1MB")
    assert result.exit_code == 2 and "--shard-size" in result.stderr
    assert not (tmp_path / "ckpt").exists()


# -- helpers -----------------------------------------------------------------------------------------


def test_groups_are_bounded_and_keep_order() -> None:
    sizes = [5, 1, 7, 2, 2, 9, 1]
    parts = list(groups(sizes, lambda s: s, limit=6))
    assert [s for part in parts for s in part] == sizes
    assert all(sum(p) <= 6 or len(p) == 1 for p in parts)


def test_rank_shares_cover_everything_once() -> None:
    sizes = list(range(1, 20))
    shares = [Ranks(rank, 3).share(sizes, lambda s: s) for rank in range(3)]
    assert sorted(s for share in shares for s in share) == sizes
    assert max(map(sum, shares)) - min(map(sum, shares)) <= max(sizes)


# -- under torchrun -----------------------------------------------------------------------------------


def _torchrun(*args: Any) -> subprocess.CompletedProcess[str]:
    rendezvous = ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *rendezvous,
               "-m", "ckpttool", "convert", *map(str, args)]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert GLOO_ABORT not in result.stderr, result.stderr  # tried once: no rank may abort at exit
    return result


# What a rank's C++ runtime prints when it exits with gloo's threads still running.
GLOO_ABORT = "terminate called without an active exception"


@pytest.mark.slow
def test_torchrun_splits_conversions(dcp_dirs: dict[int, Path], tmp_path: Path) -> None:
    source = _source_state()
    torch.save(source, tmp_path / "src.pt")
    into = _torchrun(tmp_path / "src.pt", tmp_path / "ckpt", "--to", "dcp")
    assert into.returncode == 0, into.stderr
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert_equal_tensors(_dcp_load(tmp_path / "ckpt", source), {k: v.contiguous() for k, v in source.items()})
    assert into.stdout.count("wrote:") == 1  # one report, rank 0's

    out = tmp_path / "out"
    out.mkdir()
    shards = _torchrun(dcp_dirs[2], out / "m.safetensors", "--root", "", "--shard-size", "200B")
    assert shards.returncode == 0, shards.stderr
    single = tmp_path / "single"
    single.mkdir()
    subprocess.run([sys.executable, "-m", "ckpttool", "convert", dcp_dirs[2], single / "m.safetensors", "--root", "",
                    "--shard-size", "200B"], check=True, capture_output=True, cwd=REPO)  # fmt: skip
    assert sorted(os.listdir(out)) == sorted(os.listdir(single))
    for name in os.listdir(single):  # the same files, byte for byte, as one process writes
        assert (out / name).read_bytes() == (single / name).read_bytes(), name
    assert temp_files(out) == []

    # One output file: every rank writes its share of the tensors into it, in place.
    one = _torchrun(dcp_dirs[2], tmp_path / "one.safetensors", "--root", "")
    assert one.returncode == 0, one.stderr
    subprocess.run([sys.executable, "-m", "ckpttool", "convert", dcp_dirs[2], single / "one.safetensors", "--root", ""],
                   check=True, capture_output=True, cwd=REPO)  # fmt: skip
    assert (tmp_path / "one.safetensors").read_bytes() == (single / "one.safetensors").read_bytes()
    assert temp_files(tmp_path) == []


@pytest.mark.slow
def test_torchrun_failing_on_every_rank_ends_every_rank_cleanly(tmp_path: Path) -> None:
    """A refusal after the group is set up: every rank says why, leaves the group and exits 2."""
    torch.save(_source_state(), tmp_path / "src.pt")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "other.txt").write_text("not a checkpoint")
    failed = _torchrun(tmp_path / "src.pt", tmp_path / "ckpt", "--to", "dcp")
    assert failed.returncode != 0
    assert failed.stderr.count("ckpttool: error:") == 2, failed.stderr  # one line per rank
    assert "exitcode  : 2" in failed.stderr, failed.stderr


def test_torchrun_refuses_conversions_it_cannot_split(
    tmp_path: Path, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.save(_source_state(), tmp_path / "src.pt")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = run("convert", tmp_path / "src.pt", tmp_path / "out.safetensors")
    assert result.exit_code == 2 and "only conversions into or out of a DCP folder" in result.stderr
    assert_nothing_written(tmp_path, tmp_path / "out.safetensors")


# -- stopped runs -------------------------------------------------------------------------------------


def _stopped(args: list[Any], ready: Callable[[], bool]) -> subprocess.CompletedProcess[str]:
    from signalling import signal_when

    for _ in range(4):  # a run that ends before the moment it waits for is tried again
        result = signal_when([str(a) for a in args], ready, signal.SIGTERM)
        if result is not None:
            return result
    raise AssertionError("convert finished before the signal 4 times")


@pytest.mark.slow
def test_stopped_conversions_leave_nothing(tmp_path: Path, run: Callable[..., Result]) -> None:
    torch.save({f"w{i}": torch.randn(1024, 4096) for i in range(12)}, tmp_path / "src.pt")  # 192 MiB

    def writing(pattern: str) -> Callable[[], bool]:
        return lambda: any(p.stat().st_size > 0 for p in tmp_path.glob(pattern))

    into = _stopped(["convert", tmp_path / "src.pt", tmp_path / "ckpt", "--to", "dcp"],
                    writing(".ckpt.*.ckpttool-tmp/__0_0.distcp"))  # fmt: skip
    assert into.returncode == 128 + signal.SIGTERM and len(into.stderr.splitlines()) == 1, into.stderr
    assert sorted(os.listdir(tmp_path)) == ["src.pt"]

    assert run("convert", tmp_path / "src.pt", tmp_path / "ckpt", "--to", "dcp").exit_code == 0
    out = _stopped(["convert", tmp_path / "ckpt", tmp_path / "m.safetensors"], writing(".m.safetensors.*"))
    assert out.returncode == 128 + signal.SIGTERM and len(out.stderr.splitlines()) == 1, out.stderr
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "src.pt"]


class _Recorder:
    def __init__(self) -> None:
        self.files: list[list[int]] = []  # per started bar: its total, then each advance

    def start(self, total: int) -> None:
        self.files.append([total])

    def advance(self, done: int) -> None:
        self.files[-1].append(done)


def test_one_progress_bar_per_output_file(dcp_dirs: dict[int, Path], tmp_path: Path) -> None:
    from ckpttool.ops.convert import ConvertOptions, convert

    recorder = _Recorder()
    options = ConvertOptions(to="safetensors", root="", shard_size=200)
    report = convert(str(dcp_dirs[1]), str(tmp_path / "m.safetensors"), options, recorder)
    shards = [p for p in report.outputs if p.endswith(".safetensors")]
    assert len(recorder.files) == len(shards) > 2
    for path, (total, *steps) in zip(shards, recorder.files, strict=True):
        assert total == sum(steps) == sum(t.numel() * t.element_size() for t in load_file(path).values())
