"""`.metadata` read as DCP's schema and nothing else: what it refuses, and that any bytes
give DCP metadata or a CkptError, never another exception.

Variants are written with torch's own classes and `pickle.dumps` (recording names, calling
nothing), as DCP's writer would write them; only the reading side is under test.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.builders import reduce_pickle
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

from ckpttool.errors import CkptError, FormatError
from ckpttool.formats.dcp_metadata import read_dcp_metadata, torch_metadata
from ckpttool.pickle import decode
from ckpttool.pickle.judge import judge

Box = tuple[tuple[int, ...], tuple[int, ...]]


def _metadata(shape: tuple[int, ...], boxes: list[Box], file: str = "__0_0.distcp") -> Metadata:
    chunks = [ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in boxes]
    tensor = TensorStorageMetadata(TensorProperties(dtype=torch.float16), torch.Size(shape), chunks)
    storage = {MetadataIndex("w", o, i): _StorageInfo(file, 100 * i, 100) for i, (o, _) in enumerate(boxes)}
    storage[MetadataIndex("step")] = _StorageInfo(file, 1000, 10)
    items = {"w": tensor, "step": BytesStorageMetadata()}
    return Metadata(items, {"w": ("w",), "step": ("step",)}, storage, None, "1.0.0")


def _write(folder: Path, metadata: Any) -> str:
    folder.mkdir(exist_ok=True)
    (folder / ".metadata").write_bytes(metadata if isinstance(metadata, bytes) else pickle.dumps(metadata))
    return str(folder)


def test_a_hand_made_metadata_reads_back(tmp_path: Path) -> None:
    original = _metadata((4, 6), [((0, 0), (4, 3)), ((0, 3), (4, 3))])
    read = read_dcp_metadata(_write(tmp_path, original))
    assert read.tensors["w"].dtype == "float16" and read.tensors["w"].shape == (4, 6)
    assert [c.storage.offset for c in read.tensors["w"].chunks] == [0, 100]
    assert read.entries["step"].storage.length == 10 and read.order == ["w", "step"]
    rebuilt = torch_metadata(read)
    assert rebuilt.state_dict_metadata == original.state_dict_metadata
    assert rebuilt.storage_data == original.storage_data


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ([((0, 0), (4, 3)), ((0, 2), (4, 4))], "cover it exactly once"),  # overlap
        ([((0, 0), (4, 3))], "cover it exactly once"),  # a gap
        ([((0, 0), (4, 3)), ((0, 3), (4, 4))], "outside it"),
        ([((0,), (4,))], "dimensions"),
    ],
)
def test_chunks_must_tile_the_tensor(tmp_path: Path, boxes: list[Box], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        read_dcp_metadata(_write(tmp_path, _metadata((4, 6), boxes)))


@pytest.mark.parametrize("name", ["../elsewhere.distcp", "/etc/passwd", "sub/dir.distcp", ""])
def test_data_files_stay_inside_the_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(FormatError, match="not a file name inside the folder"):
        read_dcp_metadata(_write(tmp_path, _metadata((2,), [((0,), (2,))], file=name)))


def test_a_chunk_without_storage_data(tmp_path: Path) -> None:
    metadata = _metadata((2,), [((0,), (2,))])
    metadata.storage_data = {k: v for k, v in metadata.storage_data.items() if k.fqn != "w"}
    with pytest.raises(FormatError, match="has no storage_data"):
        read_dcp_metadata(_write(tmp_path, metadata))


def test_bytes_after_the_pickle_are_refused(tmp_path: Path) -> None:
    data = pickle.dumps(_metadata((2,), [((0,), (2,))])) + b"\x80\x02N."
    with pytest.raises(FormatError, match="follow the pickle's STOP"):
        read_dcp_metadata(_write(tmp_path, data))


def test_a_missing_metadata_file(tmp_path: Path) -> None:
    with pytest.raises(CkptError, match="no .metadata"):
        read_dcp_metadata(str(tmp_path))


REAL = pickle.dumps(_metadata((4, 6), [((0, 0), (4, 3)), ((0, 3), (4, 3))]))


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300) | st.builds(lambda at, b: REAL[:at] + b + REAL[at + 1 :],
                                                 st.integers(0, len(REAL) - 1), st.binary(max_size=3)))  # fmt: skip
def test_any_bytes_give_metadata_or_a_ckpt_error(tmp_path: Path, data: bytes) -> None:
    try:
        read_dcp_metadata(_write(tmp_path, data))
    except CkptError:
        pass


@pytest.mark.parametrize(
    ("module", "name", "args", "verdict"),
    [
        ("pathlib", "PosixPath", ("/", "runs", "exp1"), "needs-allowlist"),
        ("pathlib", "WindowsPath", ("C:\\\\", "runs"), "needs-allowlist"),
        ("pathlib", "PosixPath", (1,), "unknown-call"),  # not a string: os.fspath would call into it
        ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING", (1,), "needs-allowlist"),
        ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING", (7,), "unknown-call"),
        ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING", ("0",), "unknown-call"),
    ],
)
def test_dcp_calls_are_vetted_in_their_form_only(module: str, name: str, args: tuple[Any, ...], verdict: str) -> None:
    judged = judge([decode(reduce_pickle(module, name, *args))])
    assert (judged.verdict, judged.problems) == (verdict, [])
