"""Property tests: whatever the bytes, the readers give a result or a `CkptError`.

Never an IndexError, struct.error, UnicodeDecodeError, RecursionError, MemoryError
or anything else, from the pickle machine, the format readers or the scan; and the
CLI answers 0, 1 or 2, with one stderr line for 2, never an internal error.
Inputs: raw bytes, bytes behind each format's signature, streams of valid opcodes,
and real files (made by torch and safetensors) with bytes flipped, inserted,
deleted or cut off.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hostile.builders import LEGACY_MAGIC, integer, torch_zip, whole
from hostile.support import assert_one_line_error, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpttool.errors import CkptError
from ckpttool.formats import read_checkpoint
from ckpttool.ops.safety import scan_file
from ckpttool.pickle import decode

FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=3),  # a slow example is a finding too: inputs are tiny
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- the property -------------------------------------------------------------------------


def returns_or_raises_ckpt_error(action: Callable[[], Any]) -> None:
    try:
        action()
    except CkptError:
        pass


def read_and_scan(path: Path) -> None:
    returns_or_raises_ckpt_error(lambda: read_checkpoint(str(path)))
    returns_or_raises_ckpt_error(lambda: scan_file(str(path)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# -- strategies ---------------------------------------------------------------------------

SIGNATURES = [
    b"",
    b"PK\x03\x04",  # zip
    b"\x80\x02",  # pickle protocol 2
    b"\x80\x04\x95",  # protocol 4 with a FRAME
    whole(integer(LEGACY_MAGIC)) + whole(integer(1001)),  # legacy magic and version
    struct.pack("<Q", 40) + b'{"w": {"dtype": "F32", ',  # safetensors header start
    b"(",  # protocol 0
]

# One opcode each, with a valid argument: random sequences reach deep into the machine.
OPCODE_TOKENS = [
    b"(", b".", b"0", b"1", b"2", b"N", b"]", b"}", b")", b"t", b"l", b"d", b"a", b"e", b"s",
    b"u", b"R", b"b", b"o", b"Q", b"\x81", b"\x85", b"\x86", b"\x87", b"\x88", b"\x89",
    b"\x8f", b"\x90", b"\x91", b"\x92", b"\x93", b"\x94", b"\x97", b"\x98", b"K\x01", b"K\xff",
    b"M\x00\x01", b"J\xff\xff\xff\xff", b"\x8a\x01\xff", b"G\x3f\xf0\x00\x00\x00\x00\x00\x00",
    b"X\x01\x00\x00\x00k", b"\x8c\x07storage", b"U\x03cpu", b"C\x02\x00\x01", b"q\x00", b"q\x01",
    b"h\x00", b"h\x01", b"r\x00\x00\x00\x00", b"j\x00\x00\x00\x00", b"I1\n", b"S'x'\n", b"g0\n",
    b"p0\n", b"\x82\x01", b"ccollections\nOrderedDict\n", b"ctorch\nFloatStorage\n",
    b"ctorch._utils\n_rebuild_tensor_v2\n", b"cposix\nsystem\n", b"i__main__\nNet\n",
    b"Pstorage\n", b"\x80\x02", b"\x95\x08\x00\x00\x00\x00\x00\x00\x00",
]  # fmt: skip

opcode_streams = st.lists(st.sampled_from(OPCODE_TOKENS), max_size=40).map(b"".join)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` after one to four flips, inserts, deletions, overwrites or a cut."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "overwrite", "cut"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "overwrite":  # lengths and counts: the values parsers trust most
            data[at : at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f"]))
        else:
            del data[at:]
        if not data:
            break
    return bytes(data)


# -- real files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    folder = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 2)
    state = {"fc.weight": linear.weight.detach().clone(), "fc.bias": linear.bias.detach().clone()}
    checkpoint = {
        "state_dict": state,
        "epoch": 3,
        "optimizer": torch.optim.SGD(linear.parameters(), lr=0.1).state_dict(),
    }
    torch.save(checkpoint, folder / "zip.pt")
    torch.save(checkpoint, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(linear, folder / "module.pt")
    safetensors_torch.save_file(state, str(folder / "weights.safetensors"), metadata={"epoch": "3"})
    return {path.name: path.read_bytes() for path in folder.iterdir()}


REAL_NAMES = ["zip.pt", "legacy.pt", "module.pt", "weights.safetensors"]


# -- properties -------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=512))
def test_decode_any_bytes(data: bytes) -> None:
    returns_or_raises_ckpt_error(lambda: decode(data))


@FUZZ
@given(stream=opcode_streams, protocol=st.sampled_from([b"", b"\x80\x02", b"\x80\x04", b"\x80\x05"]))
def test_decode_any_opcode_stream(stream: bytes, protocol: bytes) -> None:
    returns_or_raises_ckpt_error(lambda: decode(protocol + stream))


@FUZZ
@given(signature=st.sampled_from(SIGNATURES), tail=st.binary(max_size=256))
def test_any_file_reads_or_raises_ckpt_error(workdir: Path, signature: bytes, tail: bytes) -> None:
    path = workdir / "any.pt"
    path.write_bytes(signature + tail)
    read_and_scan(path)


@FUZZ
@given(stream=opcode_streams)
def test_any_opcode_stream_as_data_pkl_reads_or_raises_ckpt_error(workdir: Path, stream: bytes) -> None:
    path = workdir / "stream.pt"
    path.write_bytes(torch_zip(b"\x80\x02" + stream + b"."))
    read_and_scan(path)
    raw = workdir / "stream.bin"
    raw.write_bytes(b"\x80\x02" + stream + b".")
    read_and_scan(raw)


@pytest.mark.parametrize("name", REAL_NAMES)
def test_mutated_real_files_read_or_raise_ckpt_error(workdir: Path, real_files: dict[str, bytes], name: str) -> None:
    @FUZZ
    @given(data=mutated(real_files[name]))
    def check(data: bytes) -> None:
        path = workdir / f"mutated-{name}"
        path.write_bytes(data)
        read_and_scan(path)

    check()


@pytest.mark.parametrize("name", REAL_NAMES)
def test_mutated_real_files_through_the_cli(workdir: Path, real_files: dict[str, bytes], name: str) -> None:
    @settings(FUZZ, max_examples=40)
    @given(data=mutated(real_files[name]), command=st.sampled_from(["scan", "inspect"]))
    def check(data: bytes, command: str) -> None:
        path = workdir / f"cli-{name}"
        path.write_bytes(data)
        outcome = run_cli(command, "--format", "json", path)
        assert outcome.exit_code in (0, 1, 2), outcome
        if outcome.exit_code == 2:
            assert_one_line_error(outcome, path)
        else:
            assert "internal error" not in outcome.stderr
            assert outcome.json()["schema_version"] == (2 if command == "scan" else 1)

    check()


@pytest.mark.parametrize("name", REAL_NAMES)
def test_the_unmutated_real_files_read(workdir: Path, real_files: dict[str, bytes], name: str) -> None:
    """The control: the fuzzed originals are valid checkpoints ckpttool reads."""
    path = workdir / f"original-{name}"
    path.write_bytes(real_files[name])
    assert read_checkpoint(str(path)).root is not None
    assert scan_file(str(path)).verdict in ("safe", "needs-allowlist")
