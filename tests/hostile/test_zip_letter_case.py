"""Record names as torch's zip reader finds them: with the case of their letters ignored.

torch's `get_record` and `has_record` look `<root>/<name>` up through miniz with no flags,
which compares names with ASCII letters folded: `archive/DATA.PKL` is torch's data.pkl and
`archive/DATA/0` a storage record. Of two records whose names differ only in case, the
one torch reads follows from miniz's sort of the directory, not from their order: an
archive with a benign `data.pkl` and another `DATA.PKL` loads the second's tensors, and
was read by its first (`safe`, other tensors than torch.load's). `torch.load` hands an
archive to torch.jit.load only for a record named `constants.pkl` exactly. miniz also
takes a record for a folder by its MS-DOS attribute alone, and reads none of its bytes.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from support.builders import call_global, shell_touch, whole
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


def saved(values: list[float]) -> dict[str, bytes]:
    """The records of `torch.save({"w": tensor(values)})`, by name."""
    out = io.BytesIO()
    torch.save({"w": torch.tensor(values)}, out)  # noqa: TID251 - ground truth
    with zipfile.ZipFile(out) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def zipped(records: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in records:
            archive.writestr(name, data)
    return out.getvalue()


def torch_values(path: Path) -> list[float]:
    loaded = torch.load(path, weights_only=True)  # noqa: TID251 - ground truth
    values: list[float] = loaded["w"].tolist()
    return values


def ckpttool_values(path: Path, tmp_path: Path) -> list[float]:
    """The tensor as ckpttool reads it, through a conversion to safetensors."""
    from safetensors.numpy import load_file

    out = tmp_path / "read.safetensors"
    converted = run_cli("convert", path, out, "--force")
    assert converted.exit_code == 0, converted.stdout + converted.stderr
    values: list[float] = load_file(str(out))["w"].tolist()
    return values


def test_records_named_in_another_case_are_read_as_torch_reads_them(write: FileWriter, tmp_path: Path) -> None:
    records = [
        (name if name == "archive/version" else name.upper().replace("ARCHIVE/", "archive/"), data)
        for name, data in saved([1.0, 2.0, 3.0]).items()
    ]
    assert {"archive/DATA.PKL", "archive/DATA/0", "archive/BYTEORDER"} <= {name for name, _ in records}
    path = write("upper.pt", zipped(records))
    assert torch_values(path) == [1.0, 2.0, 3.0]
    assert ckpttool_values(path, tmp_path) == [1.0, 2.0, 3.0]
    report = only_file(scan(path))
    assert report["format"] == "torch-zip"
    assert (report["verdict"], report["weights_only"]["result"]) == ("safe", "loads")


def test_two_data_pkl_records_differing_in_case_are_an_anomaly(write: FileWriter) -> None:
    shown, hidden = saved([1.0, 2.0]), saved([7.0, 8.0, 9.0])
    first, rest = next(iter(shown.items())), list(shown.items())[1:]
    # the second archive's pickle names its storage "1", kept beside the first's "0"
    data_pkl = hidden["archive/data.pkl"].replace(b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x001")
    records = [first, ("archive/DATA.PKL", data_pkl), ("archive/data/1", hidden["archive/data/0"]), *rest]
    path = write("cased.pt", zipped(records))
    assert torch_values(path) == [7.0, 8.0, 9.0]  # not the first data.pkl's
    report = assert_dangerous(path)
    assert any("differ only in letter case" in p for p in report["problems"]), report["problems"]
    assert_inspect_harmless(path)


def test_a_payload_in_a_data_pkl_of_another_case_runs_nowhere(write: FileWriter, marker: Path) -> None:
    shown = saved([1.0, 2.0])
    first, rest = next(iter(shown.items())), list(shown.items())[1:]
    payload = whole(call_global("os", "system", shell_touch(marker)))
    path = write("cased.pt", zipped([first, ("archive/DATA.PKL", payload), *rest]))
    assert_dangerous(path, "os.system")
    assert_inspect_harmless(path)
    assert_not_run(marker)
    assert torch_load_runs_it(path, marker)


@pytest.mark.parametrize("name", ["archive/CONSTANTS.PKL", "archive/Constants.pkl"])
def test_only_constants_pkl_spelled_exactly_makes_a_torchscript_archive(write: FileWriter, name: str) -> None:
    records = list(saved([1.0]).items())
    path = write("plain.pt", zipped([*records, (name, whole(b"N"))]))
    assert torch_values(path) == [1.0]  # torch.load did not hand it to torch.jit.load
    report = only_file(scan(path))
    assert report["format"] == "torch-zip"
    assert report["weights_only"]["result"] == "loads"


# -- a record flagged as a folder -------------------------------------------------------------------


def with_folder_attribute(records: list[tuple[str, bytes]], folder: str) -> bytes:
    """The zip of `records`, the one named `folder` flagged as a folder by its MS-DOS
    attribute (its name, its bytes and its sizes as any file's)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in records:
            info = zipfile.ZipInfo(name)
            info.external_attr = 0x10 if name == folder else 0
            archive.writestr(info, data)
    return out.getvalue()


def test_a_storage_flagged_as_a_folder_is_not_read_as_its_bytes(write: FileWriter, tmp_path: Path) -> None:
    """miniz takes a record whose external attribute has the MS-DOS folder bit for a folder,
    whatever its name, and extracts none of its bytes into the buffer torch allocated: the
    tensor torch.load gives is not the record's bytes (zeros here). ckpttool read the bytes."""
    records = saved([1.0, 2.0, 3.0])
    storage = next(name for name in records if name.endswith("/data/0"))
    path = write("folder.pt", with_folder_attribute(list(records.items()), storage))
    # ground truth, in a child process whose allocator never held these values
    child = "import sys, torch\nprint(torch.load(sys.argv[1], weights_only=True)['w'].tolist())"
    done = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() != "[1.0, 2.0, 3.0]", done.stdout
    converted = run_cli("convert", path, tmp_path / "out.safetensors")
    assert converted.exit_code == 2 and "flagged as a folder" in converted.stderr, converted.stderr
    assert not (tmp_path / "out.safetensors").exists()
    report = only_file(scan(path))
    assert report["verdict"] == "dangerous" and any("flagged as a folder" in p for p in report["problems"])


def test_a_folder_record_with_a_trailing_slash_is_no_finding(write: FileWriter) -> None:
    records = [*saved([1.0]).items(), ("archive/extra/", b"")]
    path = write("folders.pt", with_folder_attribute(records, "archive/extra/"))
    assert torch_values(path) == [1.0]
    outcome = scan(path)
    assert outcome.exit_code == 0 and only_file(outcome)["verdict"] == "safe", outcome.stdout
