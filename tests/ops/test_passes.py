"""Each command decodes each pickle once and reads each tensor's bytes once (once more only to
verify an output it wrote): counted by instrumenting the pickle decoder and the readers (pread,
preadv, kernel copies and the pages `diff` maps), never by the clock. A change that adds a pass
over a file fails here.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from support.paths import FIXTURES_DIR

import ckpttool.pickle.machine as machine
import ckpttool.tensormap as tensormap

TENSORS, ELEMENTS = 4, 1 << 18  # 4 float32 tensors of 1 MiB: the pickle and directory are small beside them
DATA_BYTES = TENSORS * ELEMENTS * 4
OVERHEAD = 64 << 10  # what a pass over a file may read besides tensor bytes (pickle, directory, header)


@dataclass
class Passes:
    """Pickle decodes by the file they lie in, and bytes read by file."""

    decodes: Counter[str] = field(default_factory=Counter)
    read: Counter[str] = field(default_factory=Counter)

    def pickles_decoded(self, path: Path) -> int:
        return sum(self.decodes_of(path).values())

    def decodes_of(self, path: Path) -> dict[str, int]:
        """How often each pickle of the file was decoded (a zip's by record, a legacy file's by
        name, a raw pickle's as the file)."""
        return {s: n for s, n in self.decodes.items() if s == str(path) or s.startswith(f"{path}:")}

    def each_pickle_once(self, path: Path) -> bool:
        counts = self.decodes_of(path)
        return bool(counts) and set(counts.values()) == {1}

    def tensor_passes(self, path: Path) -> float:
        """How many times the file's tensor bytes were read (a whole number when the
        small reads of pickle, directory and header are set aside)."""
        return self.read[str(path)] / DATA_BYTES

    def outputs(self, folder: Path, source: Path) -> dict[str, int]:
        """Bytes read from each file in `folder` other than `source` (outputs being verified)."""
        return {p: n for p, n in self.read.items() if p.startswith(str(folder)) and p != str(source)}


def _path_of(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Passes]:
    counted = Passes()
    run = machine._Machine.run

    def counting_run(self: Any) -> Any:
        counted.decodes[str(self.source)] += 1
        return run(self)

    def wrap(name: str, size: Callable[[Any, tuple[Any, ...]], int], fd_index: int = 0) -> None:
        original = getattr(os, name)

        def counting(*args: Any) -> Any:
            result = original(*args)
            counted.read[_path_of(args[fd_index])] += size(result, args)
            return result

        monkeypatch.setattr(os, name, counting)

    release = tensormap.MappedFiles.release

    def counting_release(self: Any, path: str, start: int, end: int) -> None:
        counted.read[os.path.realpath(path)] += end - start
        release(self, path, start, end)

    monkeypatch.setattr(machine._Machine, "run", counting_run)
    wrap("pread", lambda result, args: len(result))
    wrap("preadv", lambda result, args: int(result))
    wrap("copy_file_range", lambda result, args: int(result))
    monkeypatch.setattr(tensormap.MappedFiles, "release", counting_release)
    yield counted


@pytest.fixture(params=["zip", "legacy"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The same tensors as a torch zip (one pickle, CRC-32 per record) and as the legacy
    format (five pickles, no CRC), with a safetensors copy beside them."""
    generator = torch.Generator().manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(ELEMENTS, generator=generator) for i in range(TENSORS)}
    folder = tmp_path / "src"
    folder.mkdir()
    torch.save(state, folder / "model.pt", _use_new_zipfile_serialization=request.param == "zip")
    save_file(state, folder / "model.safetensors")
    return (folder / "model.pt").resolve()


def _run(cli: Callable[..., Any], *args: Any) -> None:
    result = cli(*args, "--format", "json")
    assert result.exit_code in (0, 1), result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["inspect", "scan"])
def test_reading_metadata_decodes_once_and_reads_no_tensor(
    command: str, cli: Callable[..., Any], source: Path, passes: Passes
) -> None:
    _run(cli, command, source)
    assert passes.each_pickle_once(source), passes.decodes_of(source)
    assert passes.read[str(source)] < OVERHEAD


@pytest.mark.slow
def test_check_decodes_once_and_reads_each_record_once(cli: Callable[..., Any], source: Path, passes: Passes) -> None:
    _run(cli, "check", source)
    assert passes.each_pickle_once(source), passes.decodes_of(source)
    # the integrity check reads each record for its CRC-32; a legacy file records none
    recorded = 1 if zipfile.is_zipfile(source) else 0
    assert recorded <= passes.tensor_passes(source) < recorded + OVERHEAD / DATA_BYTES


@pytest.mark.slow
def test_stats_read_each_tensor_once(cli: Callable[..., Any], source: Path, passes: Passes) -> None:
    _run(cli, "inspect", source, "--stats")
    assert passes.each_pickle_once(source), passes.decodes_of(source)
    assert 1 <= passes.tensor_passes(source) < 1 + OVERHEAD / DATA_BYTES


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "dst_name"),
    [(("convert",), "out.safetensors"), (("convert", "--to", "pth"), "out.pt"), (("remap",), "out.pt")],
)
def test_writing_reads_the_source_once_and_the_output_once(
    args: tuple[str, ...], dst_name: str, cli: Callable[..., Any], source: Path, passes: Passes
) -> None:
    dst = source.parent.parent / dst_name
    extra = ("--device", "cpu") if args[0] == "remap" else ()
    _run(cli, *args[:1], source, dst, *args[1:], *extra)
    assert dst.exists()
    assert passes.each_pickle_once(source), passes.decodes_of(source)
    assert 1 <= passes.tensor_passes(source) < 1 + OVERHEAD / DATA_BYTES
    # the output is read back once, to verify it, under its temporary name
    verified = passes.outputs(source.parent.parent, source)
    assert len(verified) == 1, verified
    assert DATA_BYTES <= next(iter(verified.values())) < DATA_BYTES + OVERHEAD


@pytest.mark.slow
def test_diff_reads_each_side_once(cli: Callable[..., Any], source: Path, passes: Passes) -> None:
    other = source.with_suffix(".safetensors")
    _run(cli, "diff", source, other)
    assert passes.each_pickle_once(source), passes.decodes_of(source)
    assert 1 <= passes.tensor_passes(source) < 1 + OVERHEAD / DATA_BYTES
    assert 1 <= passes.read[str(other)] / DATA_BYTES < 1 + OVERHEAD / DATA_BYTES


@pytest.mark.parametrize("command", ["inspect", "scan", "check"])
def test_a_raw_pickle_is_decoded_once(command: str, cli: Callable[..., Any], tmp_path: Path, passes: Passes) -> None:
    path = (tmp_path / "config.pkl").resolve()
    path.write_bytes(pickle.dumps({"lr": 0.1, "layers": [64, 64], "name": "net"}))
    _run(cli, command, path)
    assert passes.decodes_of(path) == {str(path): 1}


@pytest.mark.parametrize("command", ["inspect", "scan", "check"])
@pytest.mark.parametrize("folder", ["files/sharded_bin", "deepspeed/zero2_fp32_2ranks"])
def test_each_file_of_a_folder_is_decoded_once(
    command: str, folder: str, cli: Callable[..., Any], passes: Passes
) -> None:
    """A checkpoint made of several files (shards, rank files): the read and the scan of one
    command share each file's decoding."""
    root = (FIXTURES_DIR / folder).resolve()
    _run(cli, command, root)
    decoded = {source: n for source, n in passes.decodes.items() if source.startswith(f"{root}/")}
    assert len({source.split(":")[0] for source in decoded}) >= 2, decoded  # every file, each once
    assert set(decoded.values()) == {1}, decoded


@pytest.mark.slow
def test_converting_safetensors_reads_it_once(cli: Callable[..., Any], source: Path, passes: Passes) -> None:
    """A source without CRC-32s: its bytes are copied through a buffer that takes theirs, and the
    output is checked against it, so the source is not read a second time to compare."""
    other, dst = source.with_suffix(".safetensors"), source.parent.parent / "out.pt"
    _run(cli, "convert", other, dst, "--to", "pth")
    assert 1 <= passes.read[str(other)] / DATA_BYTES < 1 + OVERHEAD / DATA_BYTES
    verified = passes.outputs(source.parent.parent, other)
    assert DATA_BYTES <= next(iter(verified.values())) < DATA_BYTES + OVERHEAD


@pytest.fixture
def dcp_source(tmp_path: Path) -> Path:
    """A DCP folder of the same tensors, saved by one process (each tensor one chunk)."""
    import warnings

    import torch.distributed.checkpoint as dcp

    generator = torch.Generator().manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(ELEMENTS, generator=generator) for i in range(TENSORS)}
    folder = tmp_path / "dcp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=folder, no_dist=True)
    return folder.resolve()


@pytest.mark.parametrize("to", ["safetensors", "pth"])
def test_dcp_convert_reads_each_chunk_once_and_the_output_once(
    to: str, cli: Callable[..., Any], dcp_source: Path, passes: Passes
) -> None:
    dst = dcp_source.parent / f"out.{to}"
    _run(cli, "convert", dcp_source, dst, "--root", "", "--to", to)
    assert dst.exists()
    data_files = [str(p) for p in dcp_source.glob("*.distcp")]
    assert DATA_BYTES <= sum(passes.read[f] for f in data_files) < DATA_BYTES + OVERHEAD
    assert passes.decodes[str(dcp_source / ".metadata")] == 1
    assert sum(passes.pickles_decoded(Path(f)) for f in data_files) == TENSORS  # one item pickle per tensor
    verified = passes.outputs(dcp_source.parent, dcp_source)
    verified = {p: n for p, n in verified.items() if not p.startswith(f"{dcp_source}/")}
    assert len(verified) == 1, verified
    assert DATA_BYTES <= next(iter(verified.values())) < DATA_BYTES + OVERHEAD


class _Weights(torch.nn.Module):
    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.layers = torch.nn.ParameterList(state.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum((p.sum() for p in self.layers), x)


@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_a_pt2_archive_is_read_once(command: str, cli: Callable[..., Any], tmp_path: Path, passes: Passes) -> None:
    """torch.export.save's archive: its JSON read for metadata (no tensor bytes, no pickle
    decoded for inspect), and its records once more only to verify what convert wrote."""
    import warnings

    generator = torch.Generator().manual_seed(0)
    state = {str(i): torch.randn(ELEMENTS, generator=generator) for i in range(TENSORS)}
    source = (tmp_path / "model.pt2").resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(_Weights(state), (torch.zeros(()),)), source)
    dst = tmp_path / "out.safetensors"
    _run(cli, command, source, *([dst] if command == "convert" else []))
    assert passes.read[str(source)] / DATA_BYTES < (OVERHEAD / DATA_BYTES if command == "inspect" else 1.01)
    if command == "convert":
        assert passes.read[str(source)] >= DATA_BYTES
        verified = passes.outputs(tmp_path, source)
        assert len(verified) == 1 and DATA_BYTES <= next(iter(verified.values())) < DATA_BYTES + OVERHEAD, verified
