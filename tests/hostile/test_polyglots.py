"""Files that are two formats at once: safetensors for safetensors, a pickle for torch.load.

torch.load reads any file that is neither a zip (by its first four bytes) nor a tar as a
pickle stream from its first byte (`torch.serialization._legacy_load`), whatever else the
file is, and transformers hands a `pytorch_model.bin` to torch.load whatever its bytes.
A safetensors header opens with its length, eight bytes that can be opcodes: `BINBYTES`
with a count that lands inside the header's JSON, then `SHORT_BINBYTES` hops through a
metadata string and over the header's end into the tensor data, where the payload is.
`safetensors.safe_open` reads the file as a valid safetensors file; `torch.load` runs the
payload before it fails on the magic number (given a path named `.safetensors`, torch 2.14
hands it to safetensors instead, but not a file object, nor the file renamed). Clean
safetensors files (one in 32 opens with PROTO, the header length being a multiple of 8)
must stay clean, alone or in an archive.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save as save_safetensors
from support.builders import Op, call_global, safetensors_bytes, shell_touch
from support.hostile import (
    FileWriter,
    assert_dangerous,
    assert_inspect_harmless,
    assert_not_run,
    only_file,
    run_cli,
    scan,
    torch_load_runs_it,
)

_HOP = 126  # the longest SHORT_BINBYTES hop whose count is a printable character


def safetensors_opening_a_pickle(pickled: bytes, big: int = 0) -> bytes:
    """A valid safetensors file, one U8 tensor `w` holding `pickled`, whose bytes read from
    the first are BINBYTES, SHORT_BINBYTES hops through the `note` metadata string and over
    the rest of the header, then `pickled`. `big`: the size of a U8 tensor after `w`, whose
    bytes are left for the caller to write (zeros, in a sparse file)."""
    n = len(pickled)
    tail = f'"}},"w":{{"dtype":"U8","shape":[{n}],"data_offsets":[0,{n}]}}}}'
    opening = '{"__metadata__":{"note":"'
    if big:
        opening = f'{{"big":{{"dtype":"U8","shape":[{big}],"data_offsets":[{n},{n + big}]}},' + opening[1:]
    for skip in range(max(0x40, len(opening) + 4), 0x400):
        length = Op.BINBYTES[0] | skip << 8  # the header length's bytes: BINBYTES of `skip` bytes
        landing, end = 5 + skip, 8 + length  # where the skip lands; where the tensor data starts
        hops, last = divmod(end - landing - 2, _HOP + 2)
        if len(tail) <= last <= _HOP and last not in (ord('"'), ord("\\")):
            break
    else:
        raise AssertionError("no layout")
    text = opening + "a" * (landing - 8 - len(opening))
    text += ("C" + chr(_HOP) + "a" * _HOP) * hops + "C" + chr(last) + tail
    header = text.encode().ljust(length)
    assert len(header) == length and header[landing - 8 : landing - 7] == b"C"
    return safetensors_bytes(header, pickled)


def system_pickle(marker: Path) -> bytes:
    """os.system(touch marker), STOP: no PROTO (a pickle read from inside another needs none)."""
    return call_global("os", "system", shell_touch(marker)) + Op.STOP


def test_the_construction_is_valid_safetensors_and_a_pickle(tmp_path: Path, marker: Path) -> None:
    pickled = system_pickle(marker)
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(safetensors_opening_a_pickle(pickled))
    with safe_open(str(path), "np") as f:
        assert list(f.keys()) == ["w"]
        assert f.get_tensor("w").tobytes() == pickled
    assert torch_load_runs_it(path, marker)
    # torch.load hands a path named .safetensors to safetensors; a file object it unpickles
    named = path.rename(tmp_path / "model.safetensors")
    assert not torch_load_runs_it(named, marker)
    with named.open("rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_a_safetensors_file_torch_load_unpickles_is_dangerous(write: FileWriter, marker: Path, name: str) -> None:
    path = write(name, safetensors_opening_a_pickle(system_pickle(marker)))
    report = assert_dangerous(path, "os.system")
    assert report["format"] == "safetensors"
    check = run_cli("check", path)
    assert check.exit_code == 1 and "dangerous" in check.stdout, check.stdout
    assert_inspect_harmless(path)
    assert_not_run(marker)


def test_a_hugging_face_folder_with_such_a_bin_is_dangerous(tmp_path: Path, marker: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(safetensors_opening_a_pickle(system_pickle(marker)))
    outcome = scan(folder)
    assert outcome.exit_code == 1, outcome.stdout
    verdicts = {Path(f["path"]).name: f["verdict"] for f in json.loads(outcome.stdout)["files"]}
    assert verdicts["pytorch_model.bin"] == "dangerous"
    assert_not_run(marker)


def test_such_a_file_inside_an_archive_is_dangerous(write: FileWriter, marker: Path) -> None:
    data = safetensors_opening_a_pickle(system_pickle(marker))
    assert_dangerous(write("download.tar", _tar({"pytorch_model.bin": data})), "os.system")
    assert_dangerous(write("download.zip", _zip({"pytorch_model.bin": data})), "os.system")
    assert_not_run(marker)


# -- clean safetensors files whose header length reads as opcodes ---------------------------------


def safetensors_with_length(low_bits: int, mask: int) -> bytes:
    """A file safetensors' own writer makes, its header length `low_bits` under `mask`."""
    tensors = {"w": np.arange(4, dtype=np.float32)}
    for pad in range(mask + 8):
        data = save_safetensors(tensors, metadata={"note": "x" * pad})
        if struct.unpack_from("<Q", data)[0] & mask == low_bits:
            return data
    raise AssertionError("no such length")


CLEAN = {
    "PROTO then a zero byte": (0x80, 0xFF),  # one file in 32
    "NEWTRUE, STOP": (0x2E88, 0xFFFF),  # a whole pickle, True, and zero bytes after it
}


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize("opening", CLEAN)
def test_a_clean_safetensors_file_opening_with_opcodes_stays_safe(write: FileWriter, opening: str) -> None:
    data = safetensors_with_length(*CLEAN[opening])
    try:
        pickle.loads(data)  # what torch.load does first: nothing imported, then a refusal
    except pickle.UnpicklingError:
        pass
    for path in (
        write("model.safetensors", data),
        write("download.tar", _tar({"model.safetensors": data})),
        write("download.zip", _zip({"model.safetensors": data})),
    ):
        outcome = scan(path)
        assert outcome.exit_code == 0, outcome.stdout
        assert only_file(outcome)["verdict"] == "safe", outcome.stdout


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_torch_file_named_safetensors_is_refused_by_path_as_torch_does(tmp_path: Path, suffix: str) -> None:
    """torch.load(path) gives a path ending in `.safetensors` to safetensors, whatever its
    bytes: a torch zip so named fails there, and loads from an open file or renamed."""
    import torch

    path = tmp_path / f"model{suffix}"
    torch.save({"w": torch.arange(3.0)}, path)
    by_path: Exception | None = None
    try:
        torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch raises is the ground truth
        by_path = exc
    with path.open("rb") as f:
        assert torch.load(f, weights_only=True)["w"].tolist() == [0.0, 1.0, 2.0]
    report = only_file(scan(path))
    assert report["verdict"] == "safe"
    if suffix == ".safetensors":
        assert by_path is not None
        assert report["weights_only"]["result"] == "refused"
        assert "torch.load(path) passes it to safetensors" in report["weights_only"]["reasons"][0]
    else:
        assert by_path is None and report["weights_only"]["result"] == "loads"
    assert run_cli("check", path).exit_code == 0  # safe to load: no finding


# -- a text opcode whose line runs past a MiB --------------------------------------------------------

_LONG = (1 << 20) + 4096  # past the bound ckpttool keeps on a global's name


def safetensors_with_a_long_line(pickled: bytes, opcode: int, second: int = 0) -> bytes:
    """A valid safetensors file whose header length opens with `opcode` (then `second`): a
    text opcode whose line CPython reads through the header and a U8 tensor `pad` of over a
    MiB with no newline, to the newline that ends `pad`; `pickled` follows in tensor `w`."""
    pad = b"x" * _LONG + b"\n"
    n, m = len(pad), len(pickled)
    for spaces in range(1 << 16):
        tensors = {
            "pad": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]},
            "w": {"dtype": "U8", "shape": [m], "data_offsets": [n, n + m]},
        }
        header = json.dumps(tensors, separators=(",", ":")).encode() + b" " * spaces
        if len(header) & 0xFFFF == opcode | second << 8:
            return safetensors_bytes(header, pad + pickled)
    raise AssertionError("no such length")


LONG_LINES = {
    "UNICODE": (ord("V"), 0),  # a string: the header length's other bytes, the header, `pad`
    "INT": (ord("I"), ord("1")),  # "1", a NUL byte: CPython's C reader stops there and reads 1
}


@pytest.mark.parametrize("opening", LONG_LINES)
def test_a_text_line_longer_than_a_mib_is_read_to_its_end(write: FileWriter, marker: Path, opening: str) -> None:
    data = safetensors_with_a_long_line(system_pickle(marker), *LONG_LINES[opening])
    path = write("pytorch_model.bin", data)
    with safe_open(str(path), "np") as f:
        assert sorted(f.keys()) == ["pad", "w"]
    assert torch_load_runs_it(path, marker)  # ground truth: torch.load runs the payload
    report = assert_dangerous(path, "os.system")
    assert report["format"] == "safetensors"
    assert_not_run(marker)


def test_a_clean_safetensors_file_with_a_long_first_line_stays_safe(write: FileWriter) -> None:
    data = safetensors_with_a_long_line(b"\x00" * 16, ord("V"))
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)  # the line, then a zero byte: no opcode, nothing imported
    outcome = scan(write("model.safetensors", data))
    assert outcome.exit_code == 0, outcome.stdout
    assert only_file(outcome)["verdict"] == "safe", outcome.stdout


# -- a reading that stops at one of the scan's limits ---------------------------------------------


def test_a_pickle_past_the_mark_limit_is_dangerous(write: FileWriter, marker: Path) -> None:
    """CPython nests MARKs without bound: a payload after more than the scan's 10,000 runs,
    and the scan, stopped by its limit there, fails closed."""
    pickled = b"(" * 10_001 + system_pickle(marker)
    path = write("pytorch_model.bin", safetensors_opening_a_pickle(pickled))
    assert torch_load_runs_it(path, marker)
    report = assert_dangerous(path)
    assert any("limit reached" in p for p in report["problems"]), report["problems"]
    # the protocol 0 pickle alone, a member of an archive (pickle.load reads it from there)
    assert torch_load_runs_it(write("alone.pkl", pickled), marker)
    report = assert_dangerous(write("download.zip", _zip({"model/model.pkl": pickled})))
    assert any("limit reached" in p for p in report["problems"]), report["problems"]
    assert_not_run(marker)


def _sparse(path: Path, head: bytes, size: int) -> Path:
    with path.open("wb") as f:
        f.write(head)
        f.truncate(size)
    return path


_BIG = (4 << 30) + 4096  # past the 4 GiB the scan decodes of one pickle


@pytest.mark.slow
def test_a_file_over_the_size_limit_is_read_as_far_as_torch_reads_it(tmp_path: Path, marker: Path) -> None:
    """A pickle read from the first byte of a file of over 4 GiB (an LLM's shard) is
    decoded in its first 4 GiB: the payload there is found, and a clean file stays safe."""
    head = safetensors_opening_a_pickle(system_pickle(marker), big=_BIG)
    path = _sparse(tmp_path / "pytorch_model.bin", head, len(head) + _BIG)
    with safe_open(str(path), "np") as f:
        assert sorted(f.keys()) == ["big", "w"]
    assert torch_load_runs_it(path, marker)  # torch.load reads the first bytes only
    assert assert_dangerous(path, "os.system")["format"] == "safetensors"
    assert_not_run(marker)
    for pad in range(1 << 12):  # a clean file whose header length opens with PROTO
        header = {"__metadata__": {"note": "x" * pad}, "w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
        header["big"] = {"dtype": "U8", "shape": [_BIG], "data_offsets": [1, 1 + _BIG]}
        encoded = json.dumps(header, separators=(",", ":")).encode()
        if len(encoded) & 0xFF == 0x80:
            break
    clean = _sparse(tmp_path / "clean.safetensors", safetensors_bytes(encoded, b"\x00"), 8 + len(encoded) + 1 + _BIG)
    with safe_open(str(clean), "np") as f:
        assert sorted(f.keys()) == ["big", "w"]
    outcome = scan(clean)
    assert outcome.exit_code == 0 and only_file(outcome)["verdict"] == "safe", outcome.stdout
