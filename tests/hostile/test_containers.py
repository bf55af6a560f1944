"""scan opens every container a pickle can hide in, within bounds."""

from __future__ import annotations

import pickle
import time
import zlib
from pathlib import Path

import pytest
from support.builders import (
    LegacyFile,
    ZipMember,
    call_global,
    checkpoint_zip,
    deflate_zeros,
    empty_legacy_tar,
    float_tensor,
    legacy_tar,
    shell_touch,
    state_dict_pickle,
    storage_bytes,
    torch_zip_members,
    whole,
    zip_bytes,
)
from support.corpus import npy_object_array, tar_of
from support.hostile import FileWriter, assert_dangerous, assert_not_run, only_file, run_cli, scan

from ckpttool.formats.containers import MAX_DEPTH


def system(marker: Path) -> bytes:
    return whole(call_global("os", "system", shell_touch(marker)))


def nested_zips(inner: bytes, levels: int) -> bytes:
    data = inner
    for level in range(levels):
        data = zip_bytes([ZipMember(f"level{level}.zip" if level else "model.pkl", data)], align=False)
    return data


def test_a_pickle_in_a_zip_in_a_zip_is_found(write: FileWriter, marker: Path) -> None:
    report = assert_dangerous(write("outer.zip", nested_zips(system(marker), 3)), "os.system")
    assert report["format"] == "zip"
    assert_not_run(marker)


def test_archives_nested_past_the_bound_fail_closed(write: FileWriter, marker: Path) -> None:
    report = assert_dangerous(write("deep.zip", nested_zips(system(marker), MAX_DEPTH + 2)))
    assert any("nested deeper" in p for p in report["problems"])


@pytest.mark.slow
def test_a_zip_bomb_is_refused_without_inflating_it(write: FileWriter) -> None:
    bomb = ZipMember("model.pkl", b"", method=8, payload=deflate_zeros(1 << 30), declared_size=1 << 30)
    path = write("bomb.zip", zip_bytes([bomb], align=False))
    started = time.perf_counter()
    report = assert_dangerous(path)
    assert time.perf_counter() - started < 5
    assert any("not inflated" in p for p in report["problems"])


@pytest.mark.slow
def test_a_member_that_lies_about_its_size_is_capped(write: FileWriter) -> None:
    """The declared size is small, the stream inflates to much more: the cap holds."""
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = squeezer.compress(b"\x80\x02" + bytes(64 << 20)) + squeezer.flush()
    lying = ZipMember("model.pkl", b"", method=8, payload=stream, declared_size=1000)
    report = assert_dangerous(write("liar.zip", zip_bytes([lying], align=False)))
    assert report["problems"]


def test_a_container_without_pickles_is_safe_with_a_note(write: FileWriter) -> None:
    path = write("docs.zip", zip_bytes([ZipMember("README.md", b"# hello\n"), ZipMember("c.json", b"{}")]))
    outcome = scan(path)
    assert outcome.exit_code == 0
    report = only_file(outcome)
    assert report["verdict"] == "safe" and report["pickles"] == 0
    assert any("no pickle" in n for n in report["notes"])


@pytest.mark.parametrize(
    ("name", "data", "what"),
    [
        ("model.7z", b"7z\xbc\xaf\x27\x1c" + bytes(32), "7z"),
        ("model.rar", b"Rar!\x1a\x07\x01\x00" + bytes(32), "RAR"),
    ],
)
def test_archives_ckpttool_cannot_open_exit_2_saying_so(write: FileWriter, name: str, data: bytes, what: str) -> None:
    outcome = scan(write(name, data))
    assert outcome.exit_code == 2
    assert what in outcome.stderr and "cannot open" in outcome.stderr


def test_a_pickle_beside_the_torch_records_is_scanned(write: FileWriter, marker: Path) -> None:
    weight = float_tensor("w", "0", 2, 2)
    members = torch_zip_members(state_dict_pickle([weight]), {"0": storage_bytes(weight)})
    members.append(ZipMember("archive/extra/config.txt", system(marker)))
    assert_dangerous(write("model.pt", zip_bytes(members)), "os.system")
    assert_not_run(marker)


def test_storage_records_are_not_read_as_pickles(write: FileWriter) -> None:
    """Raw tensor bytes that happen to start like a pickle are never judged as one."""
    weight = float_tensor("w", "0", 4)
    members = torch_zip_members(state_dict_pickle([weight]), {"0": b"\x80\x02c" + bytes(13)})
    assert scan(write("model.pt", zip_bytes(members))).exit_code == 0


def test_data_after_stop_in_data_pkl_is_a_problem(write: FileWriter, marker: Path) -> None:
    weight = float_tensor("w", "0", 2)
    hidden = state_dict_pickle([weight]) + system(marker)
    report = assert_dangerous(write("model.pt", zip_bytes(torch_zip_members(hidden, {"0": storage_bytes(weight)}))))
    assert any("after the pickle's STOP" in p for p in report["problems"])


def test_a_member_beside_a_legacy_tar_checkpoint_is_scanned(write: FileWriter, marker: Path) -> None:
    tar = empty_legacy_tar()
    assert scan(write("old.tar", tar)).exit_code == 0
    extended = legacy_tar({**_tar_members(tar), "notes": system(marker)})
    assert_dangerous(write("old2.tar", extended), "os.system")


def _tar_members(data: bytes) -> dict[str, bytes]:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_a_legacy_checkpoint_inside_a_zip_is_read_as_one(write: FileWriter) -> None:
    """Its raw storage bytes after the stacked pickles are not a broken pickle stream."""
    import torch

    legacy = write("legacy.pth", b"")
    torch.save({"w": torch.arange(4.0)}, legacy, _use_new_zipfile_serialization=False)
    path = write("bundle.zip", zip_bytes([ZipMember("legacy.pth", legacy.read_bytes())], align=False))
    outcome = scan(path)
    assert outcome.exit_code == 0, outcome.stdout
    assert only_file(outcome)["pickles"] == 5


def test_a_torch_checkpoint_inside_a_tar_is_read_as_one(write: FileWriter) -> None:
    weight = float_tensor("w", "0", 3)
    path = write("bundle.tar", tar_of("model.pt", checkpoint_zip([weight])))
    outcome = scan(path)
    assert outcome.exit_code == 0, outcome.stdout
    assert only_file(outcome)["pickles"] == 1


def test_npy_with_numbers_holds_no_pickle_and_object_arrays_are_read(write: FileWriter, marker: Path) -> None:
    import numpy as np

    numbers = write("n.npy", b"")
    np.save(numbers, np.arange(6, dtype=np.int8).reshape(2, 3))
    outcome = scan(numbers)
    assert outcome.exit_code == 0 and only_file(outcome)["pickles"] == 0
    assert_dangerous(write("o.npy", npy_object_array(system(marker))), "os.system")
    assert_not_run(marker)


@pytest.mark.parametrize("descr", ["object", "O8", "(2,)O", "2O", "i4,O", "<i4, O"])
def test_every_spelling_of_an_object_dtype_is_read_as_numpy_reads_it(
    write: FileWriter, marker: Path, descr: str
) -> None:
    """numpy pickles (and np.load(allow_pickle=True) unpickles) an array whose dtype holds an
    object anywhere, however the header spells it; only `|O`-like spellings were read."""
    import subprocess
    import sys

    path = write("o.npy", npy_object_array(system(marker), descr))
    assert_dangerous(path, "os.system")
    assert_dangerous(write("o.npz", zip_bytes([ZipMember("o.npy", path.read_bytes())])), "os.system")
    assert_not_run(marker)
    load = "import sys, numpy\ntry:\n    numpy.load(sys.argv[1], allow_pickle=True)\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", load, str(path)], check=False, timeout=60, capture_output=True)
    assert marker.exists()


def test_real_numpy_object_arrays_are_not_dangerous(write: FileWriter) -> None:
    import numpy as np

    path = write("objects.npy", b"")
    np.save(path, np.array(["a", {"k": 1}, [1, 2]], dtype=object), allow_pickle=True)
    outcome = scan(path)
    assert only_file(outcome)["verdict"] != "dangerous", outcome.stdout
    records = write("records.npy", b"")
    np.save(records, np.array([(1, "a"), (2, None)], dtype="i4,O"), allow_pickle=True)
    outcome = scan(records)
    assert only_file(outcome)["pickles"] == 1 and only_file(outcome)["verdict"] != "dangerous", outcome.stdout


def test_object_arrays_pickled_before_numpy_1_0_are_not_dangerous(write: FileWriter) -> None:
    """numpy's pre-1.0 pickles name `numpy.core._internal._reconstruct`, which numpy keeps
    for them (its own test data holds such a file): the same array builder as today's."""
    import numpy as np

    expected = np.array(["a", {"k": 1}, [1, 2]], dtype=object)
    today = pickle.dumps(expected, protocol=2)
    old = today.replace(b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core._internal\n_reconstruct\n")
    assert old != today
    path = write("np0.npy", npy_object_array(old).replace(b"(2,)", b"(3,)"))
    assert np.load(path, allow_pickle=True).tolist() == expected.tolist()  # numpy reads it
    outcome = scan(path)
    assert (outcome.exit_code, only_file(outcome)["verdict"]) == (0, "needs-allowlist"), outcome.stdout


def test_npy_files_python_2_wrote_are_read_as_numpy_reads_them(write: FileWriter) -> None:
    """Python 2 wrote `2L` in the header's shape and a newline after an object array's pickle."""
    import numpy as np

    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (2L,), }"
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    longs = write("py2.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 16)
    with pytest.warns(UserWarning, match="created on Python 2"):
        assert np.load(longs).tolist() == [0.0, 0.0]
    objects = np.array(["a", {"k": 1}], dtype=object)
    padded = write("padded.npy", npy_object_array(pickle.dumps(objects, protocol=2) + b"\n"))
    assert np.load(padded, allow_pickle=True).tolist() == objects.tolist()
    for path, verdict in ((longs, "safe"), (padded, "needs-allowlist")):
        outcome = scan(path)
        assert (outcome.exit_code, only_file(outcome)["verdict"], only_file(outcome)["problems"]) == (0, verdict, [])


def test_a_legacy_file_in_a_raw_payload_stays_dangerous(write: FileWriter, marker: Path) -> None:
    path = write("evil.zip", zip_bytes([ZipMember("x.pth", LegacyFile(system(marker), []).to_bytes())]))
    assert_dangerous(path, "os.system")
    assert run_cli("inspect", path).exit_code == 2
    assert_not_run(marker)


def test_pickles_in_text_named_members_are_found_by_content(write: FileWriter, marker: Path) -> None:
    protocol0 = pickle.dumps(["a"], protocol=0)[:-1] + b"0" + b"cos\nsystem\n(S'touch x'\ntR."
    assert_dangerous(write("t.zip", zip_bytes([ZipMember("readme.txt", protocol0)], align=False)), "os.system")


def _pe(valid: bool) -> bytes:
    """A DOS header whose e_lfanew points at a PE signature (or at nothing)."""
    header = bytearray(b"MZ" + b"\x00" * 126)
    header[60:64] = (64).to_bytes(4, "little")
    header[64:68] = b"PE\x00\x00" if valid else b"\x00\x00\x00\x00"
    return bytes(header) + b"\x00" * 64


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"\x7fELF\x02\x01\x01" + b"\x00" * 57, "an ELF executable or shared library"),
        (b"\xcf\xfa\xed\xfe" + b"\x00" * 60, "a Mach-O binary"),
        (_pe(True), "a Windows executable or DLL"),
    ],
)
def test_native_code_in_an_archive_is_dangerous(write: FileWriter, data: bytes, what: str) -> None:
    """Whatever loads a shared library from a model download runs it (an AOTInductor
    package's compiled model is loaded so): the member is a problem, named."""
    path = write("model.zip", zip_bytes([ZipMember("weights/model.so", data)]))
    report = only_file(scan(path))
    assert report["verdict"] == "dangerous"
    assert report["problems"] == [f"weights/model.so: {what}: whatever loads it from here runs its code"]


def test_text_that_opens_with_mz_is_no_native_code(write: FileWriter) -> None:
    path = write("notes.zip", zip_bytes([ZipMember("a.txt", _pe(False)), ZipMember("b.txt", b"MZ is a name")]))
    outcome = scan(path)
    assert outcome.exit_code == 0 and only_file(outcome)["verdict"] == "safe"
