"""`remap` against the ground truth: every torch fixture, GPU-saved files on a CPU machine.

The remapped file must load with plain `torch.load` (no `map_location`) and equal
`torch.load(SRC, map_location='cpu')` in every tensor and every other value; only the
pickle changes, every storage record is copied as it was.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from support.builders import legacy_tar_with_a_view
from support.groundtruth import (
    TORCH_FORMATS,
    assert_same_content,
    fixture_path,
    storage_locations,
    torch_load_trusted,
    zip_record,
)
from support.ops import (
    BY_NAME,
    assert_nothing_written,
    copy_fixture,
    dangerous_checkpoint,
    ids,
    pickle_globals,
    quiet_torch_notices,
    raw_records,
    record_bytes,
    records_where,
    temp_files,
    unchanged,
)

from ckpttool.errors import FormatError, OutputExistsError, UnsafeFileError, UsageError
from ckpttool.ops.rewrite import RemapReport, map_location, parse_mapping, remap

REMAPPABLE = records_where(lambda r: r["format"] in TORCH_FORMATS)
NOT_REMAPPABLE = records_where(lambda r: r["format"] not in TORCH_FORMATS)
ZIP_SOURCES = records_where(lambda r: r["format"] == "torch-zip")
# Protocol 2 pickles name their globals with GLOBAL opcodes, which the comparison reads.
PROTOCOL_2_SOURCES = [r for r in ZIP_SOURCES if r["name"] != "pickle_protocol_4"]
ON_GPU = records_where(lambda r: any(loc.startswith("cuda") for loc in r["locations"]))
CPU = parse_mapping("cpu", ())


def run_remap(src: Path, dst: Path, mapping: Any = CPU, **kwargs: Any) -> RemapReport:
    """remap(), checking that SRC's bytes are the same afterwards, whatever happens."""
    with unchanged(src):
        return remap(str(src), str(dst), mapping, **kwargs)


def load_plain(path: Path) -> Any:
    """`torch.load(path)` with no map_location: storages go where the file says.

    Fixture classes are made importable; locations are not touched.
    """
    with quiet_torch_notices():
        return torch_load_trusted(path, map_location=None)


@pytest.mark.parametrize("record", REMAPPABLE, ids=ids(REMAPPABLE))
def test_remap_to_cpu_equals_torch_load_with_map_location(record: dict[str, Any], tmp_path: Path) -> None:
    src = fixture_path(record)
    dst = tmp_path / "remapped.pt"
    report = run_remap(src, dst)

    assert zipfile.is_zipfile(dst)  # legacy input gives zip output
    assert storage_locations(dst) == {"cpu"}
    assert_same_content(load_plain(dst), torch_load_trusted(src, map_location="cpu"))
    if record["locations"] == ["cpu"]:
        assert report.changed == {}
    assert report.output == str(dst)
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("record", ZIP_SOURCES, ids=ids(ZIP_SOURCES))
def test_records_are_copied_byte_for_byte(record: dict[str, Any], tmp_path: Path) -> None:
    src = fixture_path(record)
    dst = tmp_path / "remapped.pt"
    run_remap(src, dst)
    assert record_bytes(dst) == record_bytes(src)


@pytest.mark.parametrize("record", PROTOCOL_2_SOURCES, ids=ids(PROTOCOL_2_SOURCES))
def test_the_pickle_names_the_same_globals(record: dict[str, Any], tmp_path: Path) -> None:
    # No class was resolved, replaced or dropped while the pickle was rewritten.
    src = fixture_path(record)
    dst = tmp_path / "remapped.pt"
    run_remap(src, dst)
    assert pickle_globals(raw_records(dst)["data.pkl"]) == pickle_globals(raw_records(src)["data.pkl"])


def test_big_endian_records_keep_their_byte_order(tmp_path: Path) -> None:
    src = fixture_path(BY_NAME["big_endian_dtypes"])
    dst = tmp_path / "remapped.pt"
    run_remap(src, dst)
    assert zip_record(dst, "byteorder") == b"big"
    assert_same_content(load_plain(dst), torch_load_trusted(src))


@pytest.mark.parametrize("record", ON_GPU, ids=ids(ON_GPU))
def test_gpu_checkpoint_loads_on_this_cpu_machine_after_remap(record: dict[str, Any], tmp_path: Path) -> None:
    src = fixture_path(record)
    if not torch.cuda.is_available():  # as on this test machine: the source does not load as it is
        with pytest.raises(RuntimeError, match="CUDA"):
            load_plain(src)

    dst = tmp_path / "remapped.pt"
    report = run_remap(src, dst)
    assert_same_content(load_plain(dst), torch_load_trusted(src, map_location="cpu"))
    cuda = sorted(loc for loc in record["locations"] if loc.startswith("cuda"))
    assert sorted(report.changed) == [f"{loc} -> cpu" for loc in cuda]


def test_optimizer_state_is_remapped_too(tmp_path: Path) -> None:
    # Adam's moments sit on cuda:0 next to the model; its step counters stay on cpu.
    record = BY_NAME["cuda0_model_optimizer"]
    dst = tmp_path / "remapped.pt"
    run_remap(fixture_path(record), dst)
    loaded = load_plain(dst)
    states = loaded["optimizer"]["state"]
    assert states and all(
        t.device.type == "cpu" for s in states.values() for t in s.values() if isinstance(t, torch.Tensor)
    )


def test_map_one_gpu_to_another(tmp_path: Path) -> None:
    src = fixture_path(BY_NAME["cuda1_state_dict"])
    dst = tmp_path / "remapped.pt"
    report = run_remap(src, dst, parse_mapping(None, ("cuda:1=cuda:0",)))
    assert storage_locations(dst) == {"cuda:0"}
    assert report.changed == {"cuda:1 -> cuda:0": report.storages}
    assert_same_content(torch_load_trusted(dst), torch_load_trusted(src))


@pytest.mark.slow
def test_map_leaves_other_locations_alone(tmp_path: Path) -> None:
    src = fixture_path(BY_NAME["cuda0_model_optimizer"])
    dst = tmp_path / "remapped.pt"
    run_remap(src, dst, parse_mapping(None, ("cuda:0=cuda:1",)))
    assert storage_locations(dst) == {"cpu", "cuda:1"}


@pytest.mark.slow
def test_map_by_device_type(tmp_path: Path) -> None:
    src = fixture_path(BY_NAME["cuda0_model_optimizer"])
    dst = tmp_path / "remapped.pt"
    run_remap(src, dst, parse_mapping(None, ("cuda=cpu",)))
    assert storage_locations(dst) == {"cpu"}
    assert_same_content(load_plain(dst), torch_load_trusted(src))


@pytest.mark.parametrize(
    ("location", "maps", "device", "expected"),
    [
        ("cuda:1", ("cuda:1=cuda:0",), None, "cuda:0"),
        ("cuda:0", ("cuda:1=cuda:0",), None, "cuda:0"),
        ("cuda:3", ("cuda=cpu",), None, "cpu"),
        ("cpu", ("cuda=cpu",), None, "cpu"),
        ("cuda:2", (), "cpu", "cpu"),
        ("cuda:1", ("cuda:1=cuda:0",), "cpu", "cuda:0"),  # an explicit --map wins over --device
    ],
)
def test_mapping_rules(location: str, maps: tuple[str, ...], device: str | None, expected: str) -> None:
    assert map_location(location, parse_mapping(device, maps)) == expected


@pytest.mark.parametrize("maps", [("cuda:1",), ("=cpu",), ("cuda:0=",)])
def test_malformed_map_is_a_usage_error(maps: tuple[str, ...]) -> None:
    with pytest.raises(UsageError):
        parse_mapping(None, maps)


def test_no_target_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_mapping(None, ())


@pytest.mark.parametrize("record", NOT_REMAPPABLE, ids=ids(NOT_REMAPPABLE))
def test_formats_without_storage_locations_are_refused(record: dict[str, Any], tmp_path: Path) -> None:
    dst = tmp_path / "remapped.pt"
    with pytest.raises(FormatError):
        run_remap(fixture_path(record), dst)
    assert_nothing_written(tmp_path, dst)


@pytest.mark.slow
def test_existing_destination_needs_force(tmp_path: Path) -> None:
    src = fixture_path(BY_NAME["cuda0_state_dict"])
    dst = tmp_path / "remapped.pt"
    dst.write_bytes(b"precious")
    with pytest.raises(OutputExistsError):
        run_remap(src, dst)
    assert dst.read_bytes() == b"precious"
    run_remap(src, dst, force=True)
    assert storage_locations(dst) == {"cpu"}


def test_source_is_never_its_own_destination(tmp_path: Path) -> None:
    src = copy_fixture(BY_NAME["cuda0_state_dict"], tmp_path)
    with pytest.raises(UsageError):
        run_remap(src, src, force=True)
    assert temp_files(tmp_path) == []


@pytest.mark.slow
def test_trust_remaps_through_torch(tmp_path: Path) -> None:
    record = BY_NAME["cuda0_model_optimizer"]
    src = fixture_path(record)
    dst = tmp_path / "remapped.pt"
    run_remap(src, dst, trust=True)
    assert storage_locations(dst) == {"cpu"}
    assert_same_content(load_plain(dst), torch_load_trusted(src, map_location="cpu"))


def test_trust_refuses_a_dangerous_file_without_force(tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    src, _ = dangerous_checkpoint(tmp_path, marker)
    dst = tmp_path / "remapped.pt"
    with pytest.raises(UnsafeFileError):
        run_remap(src, dst, trust=True)
    assert not marker.exists()
    assert_nothing_written(tmp_path, dst)


def test_a_legacy_tar_storage_used_only_through_a_view_is_copied_and_verified(tmp_path: Path) -> None:
    """Old torch wrote storage views: the base storage is then named by no tensor, and the
    rewritten pickle names it nowhere, yet its record is copied and checked."""
    src = tmp_path / "viewed.tar"
    src.write_bytes(legacy_tar_with_a_view())
    dst = tmp_path / "remapped.pt"
    run_remap(src, dst)
    assert_same_content(load_plain(dst), torch_load_trusted(src, map_location="cpu"))
