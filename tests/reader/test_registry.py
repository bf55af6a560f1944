"""The format registry: one list through which detection, reading and scanning all go."""

from __future__ import annotations

import gzip
import os
import typing
from pathlib import Path

import pytest
import torch
from conftest import COMMITTED_FIXTURES
from safetensors.torch import save_file

from ckpttool.checkpoint import Checkpoint
from ckpttool.errors import CkptError, UnknownFormatError, ZipFormatError
from ckpttool.formatnames import FormatName
from ckpttool.formats import detect, find_pickles, read_checkpoint, registry
from ckpttool.formats import format as format_module
from ckpttool.formats.format import Format, Found, Probe
from ckpttool.ops.safety import scan_file

FIXTURES = sorted(COMMITTED_FIXTURES / n for n in os.listdir(COMMITTED_FIXTURES))


def test_every_format_is_declared_once_under_a_known_name() -> None:
    names = [fmt.name for fmt in registry.FORMATS]
    assert len(names) == len(set(names))
    assert set(names) <= set(typing.get_args(FormatName))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_detect_read_and_scan_name_one_format(path: Path) -> None:
    try:
        fmt = detect(str(path))
    except CkptError:
        with pytest.raises(CkptError):
            read_checkpoint(str(path))
        return
    assert read_checkpoint(str(path)).format == fmt
    assert scan_file(str(path)).format == fmt


def count_archive_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real = format_module.open_archive

    def counting(path: str) -> typing.Any:
        opened.append(path)
        return real(path)

    monkeypatch.setattr(format_module, "open_archive", counting)
    return opened


@pytest.mark.parametrize("name", ["cnn_state_dict.pth", "cnn_scripted.pt"])
def test_a_zips_central_directory_is_read_once(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    opened = count_archive_opens(monkeypatch)
    path = str(COMMITTED_FIXTURES / name)
    read_checkpoint(path)
    assert opened == [path]
    scan_file(path)
    assert opened == [path, path]


def test_containers_are_scanned_but_never_read(tmp_path: Path) -> None:
    inner = tmp_path / "state.pth"
    torch.save({"w": torch.ones(2)}, inner)
    packed = tmp_path / "state.pth.gz"
    packed.write_bytes(gzip.compress(inner.read_bytes()))
    assert find_pickles(str(packed)).format == "gzip"
    assert scan_file(str(packed)).pickles == 1
    with pytest.raises(UnknownFormatError):
        read_checkpoint(str(packed))


def test_a_plain_zip_is_scanned_as_a_zip_and_read_as_a_refused_torch_zip(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "download.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert find_pickles(str(path)).format == "zip"
    assert detect(str(path)) == "torch-zip"
    with pytest.raises(ZipFormatError, match="data.pkl"):
        read_checkpoint(str(path))


def test_a_new_format_is_one_entry_in_the_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Declaring a format once makes detect, read and scan all know it."""
    path = tmp_path / "model.fake"
    path.write_bytes(b"\x00FAKE" + bytes(60))

    def read(probe: Probe) -> Checkpoint:
        return Checkpoint(probe.path, "raw-pickle", probe.size, {"entry": 1}, files=[probe.path])

    fake = Format(
        "raw-pickle", lambda probe: probe.head.startswith(b"\x00FAKE"), pickles=lambda probe: Found(), read=read
    )
    with pytest.raises(UnknownFormatError):
        detect(str(path))
    monkeypatch.setattr(registry, "FORMATS", (fake, *registry.FORMATS))
    assert detect(str(path)) == "raw-pickle"
    assert read_checkpoint(str(path)).root == {"entry": 1}
    report = scan_file(str(path))
    assert (report.format, report.verdict, report.pickles) == ("raw-pickle", "safe", 0)


def test_a_folder_with_dcp_metadata_is_dcp_before_a_weights_file(tmp_path: Path) -> None:
    folder = tmp_path / "step-100"
    folder.mkdir()
    (folder / ".metadata").write_bytes(b"\x80\x04N.")  # a pickle of None: no DCP metadata
    save_file({"w": torch.ones(2)}, str(folder / "model.safetensors"))
    assert detect(str(folder)) == "dcp"
    with pytest.raises(CkptError):
        read_checkpoint(str(folder))


def test_a_sharded_index_wins_over_a_single_file_in_the_same_folder(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in os.listdir(COMMITTED_FIXTURES / "sharded_safetensors"):
        (folder / name).write_bytes((COMMITTED_FIXTURES / "sharded_safetensors" / name).read_bytes())
    torch.save({"other": torch.zeros(1)}, folder / "pytorch_model.bin")
    assert detect(str(folder)) == "sharded-safetensors"
    assert "other" not in read_checkpoint(str(folder)).root


@pytest.mark.parametrize("where", ["folder", "index"])
def test_a_sharded_index_is_loaded_once(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    from ckpttool.formats import sharded

    loaded: list[str] = []
    real = sharded.load_index

    def counting(path: str) -> typing.Any:
        loaded.append(path)
        return real(path)

    monkeypatch.setattr(sharded, "load_index", counting)
    folder = COMMITTED_FIXTURES / "sharded_safetensors"
    path = str(folder if where == "folder" else folder / "model.safetensors.index.json")
    checkpoint = read_checkpoint(path)
    assert len(loaded) == 1
    assert checkpoint.format == "sharded-safetensors"
    report = scan_file(path)
    assert len(loaded) == 2
    assert report.format == "sharded-safetensors"
