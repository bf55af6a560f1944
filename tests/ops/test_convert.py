"""`convert` against the ground truth: every fixture, both output formats, every option.

What ckpttool writes is read back by the reference readers (`safetensors.torch.load_file`,
`torch.load(weights_only=True)`) and compared bit for bit with what torch or the model
itself says the weights are. Failures while writing are in test_failures.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from groundtruth import (
    TORCH_FORMATS,
    expected_state_dict_keys,
    fixture_path,
    ground_truth_weights,
    tensors_equal,
    torch_load_trusted,
    weights_at,
)
from ops.support import (
    ALIASES_KEY,
    BY_NAME,
    CONVERT_REFUSED,
    NO_SAFETENSORS_DTYPE,
    assert_nothing_written,
    assert_same_tensors,
    convertible,
    copy_fixture,
    dangerous_checkpoint,
    expected_dst_temp_name,
    ids,
    load_output,
    load_sharded_output,
    read_index,
    records_where,
    safetensors_metadata,
    temp_files,
    tied_groups,
    torch_load_weights_only,
    unchanged,
)
from safetensors.torch import load_file

from ckpttool.atomic import OutputSet
from ckpttool.errors import (
    CkptError,
    FileAccessError,
    FormatError,
    OutputExistsError,
    UnsafeFileError,
    UsageError,
    WeightsNotFoundError,
)
from ckpttool.ops.convert import ConvertOptions, ConvertReport, convert, parse_size

FORMATS = ("safetensors", "pth")
EXTENSION = {"safetensors": "safetensors", "pth": "pt"}


def run_convert(src: Path, dst: Path, **options: Any) -> ConvertReport:
    """convert(), checking that SRC's bytes are the same afterwards, whatever happens."""
    with unchanged(src):
        return convert(str(src), str(dst), ConvertOptions(**options))


def destination(folder: Path, to: str, stem: str = "out") -> Path:
    return folder / f"{stem}.{EXTENSION[to]}"


def castable(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """`tensor.to(dtype)` for floating tensors torch can cast; None for the rest."""
    if not tensor.is_floating_point():
        return None
    try:
        return tensor.to(dtype)
    except (NotImplementedError, RuntimeError):  # packed float4 has no cast kernel
        return None


def convert_cases() -> list[Any]:
    return [pytest.param(record, to, id=f"{record['name']}-{to}") for to in FORMATS for record in convertible(to)]


# -- every fixture, both formats ------------------------------------------------------------------


@pytest.mark.parametrize(("record", "to"), convert_cases())
def test_round_trip_equals_ground_truth(record: dict[str, Any], to: str, tmp_path: Path) -> None:
    dst = destination(tmp_path, to)
    report = run_convert(fixture_path(record), dst, to=to)

    expected = ground_truth_weights(record)
    # A pth state_dict keeps the source's key order; safetensors and sharded maps have none.
    ordered = to == "pth" and record["format"] in TORCH_FORMATS
    assert_same_tensors(load_output(dst, to), expected, ordered=ordered)
    assert report.outputs == [str(dst)]
    assert report.format == to
    assert report.tensors == len(expected)
    assert report.weights_root == record["weights_root"]
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize(
    "record",
    records_where(lambda r: r["model"] is not None),
    ids=ids(records_where(lambda r: r["model"] is not None)),
)
def test_keys_are_the_models_state_dict_keys(record: dict[str, Any], tmp_path: Path) -> None:
    # Also for whole pickled models, whose state_dict is derived without their class.
    dst = tmp_path / "out.safetensors"
    run_convert(fixture_path(record), dst)
    assert sorted(load_output(dst, "safetensors")) == sorted(expected_state_dict_keys(record))


@pytest.mark.parametrize(
    ("name", "to"),
    [(name, to) for name in CONVERT_REFUSED for to in FORMATS]
    + [(name, "safetensors") for name in NO_SAFETENSORS_DTYPE],
)
def test_unconvertible_sources_are_refused_cleanly(name: str, to: str, tmp_path: Path) -> None:
    dst = destination(tmp_path, to)
    with pytest.raises((FormatError, WeightsNotFoundError)) as caught:
        run_convert(fixture_path(BY_NAME[name]), dst, to=to)
    assert_nothing_written(tmp_path, dst)
    if name in NO_SAFETENSORS_DTYPE:
        # The message names the tensor and says what to do instead.
        assert "complex128" in str(caught.value) and "--to pth" in str(caught.value)


# -- where the weights are ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "root"),
    [
        ("timm_checkpoint_with_ema", "state_dict_ema"),  # reported, never chosen on its own
        ("timm_checkpoint_with_ema", "state_dict"),
        ("imagenet_style_checkpoint", "state_dict"),
        ("yolo_style_whole_model_in_dict", "model"),
        ("general_checkpoint_tensor_loss", "model_state_dict"),
    ],
)
@pytest.mark.parametrize("to", FORMATS)
def test_root_override(name: str, root: str, to: str, tmp_path: Path) -> None:
    record = BY_NAME[name]
    dst = destination(tmp_path, to)
    report = run_convert(fixture_path(record), dst, to=to, root=root)
    expected = dict(weights_at(torch_load_trusted(fixture_path(record)), root))
    assert_same_tensors(load_output(dst, to), expected)
    assert report.weights_root == root


def test_root_that_names_nothing_is_refused(tmp_path: Path) -> None:
    dst = tmp_path / "out.safetensors"
    with pytest.raises(CkptError):
        run_convert(fixture_path(BY_NAME["imagenet_style_checkpoint"]), dst, root="no_such_entry")
    assert_nothing_written(tmp_path, dst)


# -- shared storages, views, tied weights ---------------------------------------------------------

SHARING = [
    "tensor_layouts",
    "legacy_tar_layouts",
    "tied_weights_state_dict",
    "tied_weights_whole_model",
]


@pytest.mark.parametrize("name", SHARING)
@pytest.mark.parametrize("to", FORMATS)
def test_shared_storages_and_views_are_written_not_refused(name: str, to: str, tmp_path: Path) -> None:
    record = BY_NAME[name]
    expected = ground_truth_weights(record)
    assert tied_groups(expected), "the fixture ties tensors"  # what makes this case hard
    dst = destination(tmp_path, to)
    run_convert(fixture_path(record), dst, to=to)
    actual = load_output(dst, to)
    assert_same_tensors(actual, expected)
    if to == "safetensors":
        assert ALIASES_KEY not in safetensors_metadata(dst)  # without --dedupe every key is stored


def test_layout_fixture_holds_offsets_and_strides() -> None:
    # Guards the meaning of the round trips above: these views are really there.
    expected = ground_truth_weights(BY_NAME["tensor_layouts"])
    assert any(not t.is_contiguous() for t in expected.values())
    assert any(t.storage_offset() > 0 for t in expected.values())


@pytest.mark.parametrize("name", SHARING)
def test_dedupe_safetensors_stores_tied_tensors_once(name: str, tmp_path: Path) -> None:
    record = BY_NAME[name]
    expected = ground_truth_weights(record)
    dst = tmp_path / "out.safetensors"
    report = run_convert(fixture_path(record), dst, dedupe=True)

    actual = load_output(dst, "safetensors")
    aliases: dict[str, str] = json.loads(safetensors_metadata(dst)[ALIASES_KEY])
    assert report.aliases == aliases
    assert set(actual).isdisjoint(aliases)
    assert set(actual) | set(aliases) == set(expected)
    for group in tied_groups(expected):
        kept = [key for key in group if key in actual]
        assert len(kept) == 1, group
        assert {aliases[key] for key in group if key != kept[0]} == {kept[0]}
    tied = {key for group in tied_groups(expected) for key in group}
    assert set(aliases) <= tied, "only tied tensors may become aliases (slices of one storage are not)"
    for key, tensor in expected.items():
        assert tensors_equal(actual[aliases.get(key, key)], tensor), key


@pytest.mark.parametrize("name", SHARING)
def test_dedupe_pth_aliases_share_one_storage(name: str, tmp_path: Path) -> None:
    record = BY_NAME[name]
    expected = ground_truth_weights(record)
    dst = tmp_path / "out.pt"
    run_convert(fixture_path(record), dst, to="pth", dedupe=True)
    actual = load_output(dst, "pth")
    assert_same_tensors(actual, expected)
    for group in tied_groups(expected):
        pointers = {actual[key].untyped_storage().data_ptr() for key in group}
        assert len(pointers) == 1, group
    # Tying in the output is exactly the tying in the source.
    assert sorted(map(sorted, tied_groups(actual))) == sorted(map(sorted, tied_groups(expected)))


# -- dtype ----------------------------------------------------------------------------------------

CAST_CASES = [
    ("cnn_state_dict", "safetensors"),
    ("batchnorm_state_dict", "safetensors"),  # int64 num_batches_tracked stays int64
    ("safetensors_dtypes", "safetensors"),
    ("dtypes", "pth"),
    ("big_endian_dtypes", "pth"),
    ("tensor_layouts", "pth"),  # views, cast one at a time
]


@pytest.mark.parametrize(("name", "to"), CAST_CASES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_dtype_casts_floating_tensors_only(name: str, to: str, dtype: str, tmp_path: Path) -> None:
    record = BY_NAME[name]
    source = ground_truth_weights(record)
    target = getattr(torch, dtype)
    expected = {key: castable(t, target) if castable(t, target) is not None else t for key, t in source.items()}
    dst = destination(tmp_path, to)
    report = run_convert(fixture_path(record), dst, to=to, dtype=dtype)
    assert_same_tensors(load_output(dst, to), expected)
    assert report.cast == sum(expected[k].dtype != source[k].dtype for k in source)


# -- names and metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    records_where(lambda r: bool(r["key_prefix"]) and r["name"] not in CONVERT_REFUSED),
    ids=ids(records_where(lambda r: bool(r["key_prefix"]) and r["name"] not in CONVERT_REFUSED)),
)
def test_strip_prefix_gives_the_models_own_keys(record: dict[str, Any], tmp_path: Path) -> None:
    prefix = record["key_prefix"]
    dst = tmp_path / "out.safetensors"
    run_convert(fixture_path(record), dst, strip_prefixes=(prefix,))
    expected = {key.removeprefix(prefix): t for key, t in ground_truth_weights(record).items()}
    assert_same_tensors(load_output(dst, "safetensors"), expected)
    if record["derived_from"]:
        original = ground_truth_weights(BY_NAME[record["derived_from"]])
        assert set(expected) <= set(original)
        assert all(tensors_equal(expected[k], original[k]) for k in expected)


def test_renames_apply_in_order_after_prefixes(tmp_path: Path) -> None:
    record = BY_NAME["dataparallel_state_dict"]
    dst = tmp_path / "out.pt"
    renames = ((r"^conv(\d+)\.", r"features.conv\1."), (r"^features\.conv1\.", "stem."))
    run_convert(fixture_path(record), dst, to="pth", strip_prefixes=("module.",), renames=renames)
    source = ground_truth_weights(record)
    expected = {_renamed(key): t for key, t in source.items()}
    assert "stem.weight" in expected and "features.conv2.weight" in expected
    assert_same_tensors(load_output(dst, "pth"), expected, ordered=True)


def _renamed(key: str) -> str:
    key = key.removeprefix("module.")
    if key.startswith("conv1."):
        return "stem." + key.removeprefix("conv1.")
    if key.startswith("conv"):
        return "features." + key
    return key


@pytest.mark.parametrize(
    ("strip", "renames"),
    [((), ((r".*", "same"),)), (("conv1.", "conv2."), ())],
    ids=["rename-to-one-name", "strip-to-collision"],
)
def test_names_that_collide_are_refused(strip: tuple[str, ...], renames: Any, tmp_path: Path) -> None:
    dst = tmp_path / "out.safetensors"
    with pytest.raises(UsageError):
        run_convert(fixture_path(BY_NAME["cnn_state_dict"]), dst, strip_prefixes=strip, renames=renames)
    assert_nothing_written(tmp_path, dst)


def test_invalid_rename_regex_is_a_usage_error(tmp_path: Path) -> None:
    dst = tmp_path / "out.safetensors"
    with pytest.raises(UsageError):
        run_convert(fixture_path(BY_NAME["cnn_state_dict"]), dst, renames=(("conv(", "x"),))
    assert_nothing_written(tmp_path, dst)


def test_prefix_that_matches_nothing_is_noted(tmp_path: Path) -> None:
    record = BY_NAME["cnn_state_dict"]
    dst = tmp_path / "out.safetensors"
    report = run_convert(fixture_path(record), dst, strip_prefixes=("module.",))
    assert any("module." in note for note in report.notes)
    assert_same_tensors(load_output(dst, "safetensors"), ground_truth_weights(record))


def test_metadata_is_written_to_the_safetensors_header(tmp_path: Path) -> None:
    dst = tmp_path / "out.safetensors"
    metadata = {"author": "ckpttool tests", "license": "apache-2.0", "empty": ""}
    run_convert(fixture_path(BY_NAME["cnn_state_dict"]), dst, metadata=metadata)
    written = safetensors_metadata(dst)
    assert {k: written.get(k) for k in metadata} == metadata
    assert written.get("format") == "pt"  # what transformers requires of a safetensors file


# -- shards ---------------------------------------------------------------------------------------

SHARD_NAMES = {"safetensors": "model.safetensors", "pth": "pytorch_model.bin"}


@pytest.mark.parametrize("to", FORMATS)
def test_shards_follow_the_hugging_face_layout(to: str, tmp_path: Path) -> None:
    record = BY_NAME["cnn_state_dict"]
    expected = ground_truth_weights(record)
    limit = 10_000
    dst = tmp_path / SHARD_NAMES[to]
    report = run_convert(fixture_path(record), dst, to=to, shard_size=limit)

    stem, _, extension = dst.name.partition(".")
    index = read_index(dst)
    shards = sorted(set(index["weight_map"].values()))
    count = len(shards)
    assert count > 1
    assert shards == [f"{stem}-{i:05d}-of-{count:05d}.{extension}" for i in range(1, count + 1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*shards, f"{dst.name}.index.json"])
    assert report.outputs == [str(tmp_path / s) for s in shards] + [f"{dst}.index.json"]
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in expected.values())
    for shard in shards:
        tensors = load_output(tmp_path / shard, to)
        assert len(tensors) == 1 or sum(t.nbytes for t in tensors.values()) <= limit
    assert_same_tensors(load_sharded_output(dst, to), expected)


def test_shard_size_above_the_total_writes_one_file(tmp_path: Path) -> None:
    record = BY_NAME["cnn_state_dict"]
    dst = tmp_path / "model.safetensors"
    run_convert(fixture_path(record), dst, shard_size=parse_size("5GB"))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert_same_tensors(load_output(dst, "safetensors"), ground_truth_weights(record))


def test_sharded_output_reads_back_through_ckpttool(tmp_path: Path) -> None:
    record = BY_NAME["neural_network_state_dict"]
    folder = tmp_path / "sharded"
    folder.mkdir()
    run_convert(fixture_path(record), folder / "model.safetensors", shard_size=50_000)
    merged = tmp_path / "merged.pt"
    run_convert(folder, merged, to="pth")
    assert_same_tensors(load_output(merged, "pth"), ground_truth_weights(record))


@pytest.mark.parametrize(
    ("text", "size"),
    [("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("512MiB", 512 * 2**20),
     ("1024", 1024), ("10kB", 10_000), ("1.5GB", 1_500_000_000)],
)  # fmt: skip
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "abc", "5 parsecs", "0", "-1GB", "GB"])
def test_parse_size_rejects_nonsense(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


# -- where and how the output lands ---------------------------------------------------------------


def test_existing_destination_needs_force(tmp_path: Path) -> None:
    record = BY_NAME["cnn_state_dict"]
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"precious")
    with pytest.raises(OutputExistsError):
        run_convert(fixture_path(record), dst)
    assert dst.read_bytes() == b"precious"
    assert temp_files(tmp_path) == []

    run_convert(fixture_path(record), dst, force=True)
    assert_same_tensors(load_output(dst, "safetensors"), ground_truth_weights(record))


def test_existing_shard_needs_force(tmp_path: Path) -> None:
    dst = tmp_path / "model.safetensors"
    (tmp_path / "model-00001-of-00003.safetensors").write_bytes(b"precious")
    with pytest.raises(OutputExistsError):
        run_convert(fixture_path(BY_NAME["cnn_state_dict"]), dst, shard_size=10_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-00001-of-00003.safetensors"]


def test_source_is_never_its_own_destination(tmp_path: Path) -> None:
    src = copy_fixture(BY_NAME["cnn_state_dict"], tmp_path)
    with pytest.raises(UsageError):
        run_convert(src, src, to="pth", force=True)
    assert temp_files(tmp_path) == []


def test_missing_destination_folders_are_created(tmp_path: Path) -> None:
    """As `mkdir -p`: shards and their index land in `out/`, read back as the source."""
    src = fixture_path(BY_NAME["cnn_state_dict"])
    dst = tmp_path / "out" / "deeper" / "model.safetensors"
    report = run_convert(src, dst, to="safetensors", shard_size=1000)
    assert len(report.outputs) > 2 and all(Path(p).parent == dst.parent for p in report.outputs)
    truth = torch.load(src, weights_only=True)
    read: dict[str, torch.Tensor] = {}
    for shard in report.outputs:
        if shard.endswith(".safetensors"):
            read.update(load_file(shard))
    assert read.keys() == truth.keys() and all(torch.equal(read[k], truth[k]) for k in truth)


def test_folders_created_for_a_failed_conversion_are_removed(tmp_path: Path) -> None:
    kept = tmp_path / "existing"
    kept.mkdir()
    dst = kept / "new" / "deeper" / "out.safetensors"
    with pytest.raises(FileAccessError):
        convert(str(tmp_path / "missing.pt"), str(dst), ConvertOptions())
    assert not (kept / "new").exists() and kept.is_dir()


def test_destination_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        run_convert(fixture_path(BY_NAME["cnn_state_dict"]), tmp_path)
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("to", FORMATS)
def test_output_is_written_to_a_temp_file_beside_dst(to: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    original = OutputSet.open

    def recording_open(self: OutputSet, final: str) -> Any:
        pending = original(self, final)
        opened.append(pending.temp)
        return pending

    monkeypatch.setattr(OutputSet, "open", recording_open)
    dst = destination(tmp_path, to)
    run_convert(fixture_path(BY_NAME["cnn_state_dict"]), dst, to=to)
    assert len(opened) == 1 and expected_dst_temp_name(dst, opened[0])
    assert [p.name for p in tmp_path.iterdir()] == [dst.name]


# -- --trust --------------------------------------------------------------------------------------


def test_trust_loads_with_torch_load_weights_only_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = BY_NAME["model_optimizer_checkpoint"]
    calls: list[Mapping[str, Any]] = []
    original = torch.load  # noqa: TID251 - a spy that passes every call through

    def spying_load(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spying_load)
    dst = tmp_path / "out.safetensors"
    report = run_convert(fixture_path(record), dst, trust=True)
    assert any(call.get("weights_only") is False for call in calls)
    assert report.weights_root == "model"
    assert_same_tensors(load_output(dst, "safetensors"), ground_truth_weights(record))


@pytest.mark.parametrize("to", FORMATS)
def test_trust_converts_a_dangerous_file_only_with_force(to: str, tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    src, weights = dangerous_checkpoint(tmp_path, marker)
    dst = destination(tmp_path, to)
    with pytest.raises(UnsafeFileError):
        run_convert(src, dst, to=to, trust=True)
    assert not marker.exists()
    assert_nothing_written(tmp_path, dst)

    run_convert(src, dst, to=to, trust=True, force=True)
    assert marker.exists()  # torch.load(weights_only=False) ran the pickle, as asked
    assert_same_tensors(load_output(dst, to), weights)


def test_without_trust_a_dangerous_file_converts_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    src, weights = dangerous_checkpoint(tmp_path, marker)
    dst = tmp_path / "out.safetensors"
    run_convert(src, dst)
    assert not marker.exists()
    assert_same_tensors(load_output(dst, "safetensors"), weights)


def test_trust_never_falls_back_to_the_code_free_reader(tmp_path: Path) -> None:
    # torch cannot load this file (its class's package is absent); with --trust the
    # conversion fails rather than quietly reading it without torch.
    record = BY_NAME["nn_whole_model_package"]
    dst = tmp_path / "out.safetensors"
    with pytest.raises(Exception) as caught:
        run_convert(fixture_path(record), dst, trust=True)
    assert "models" in str(caught.value)
    assert_nothing_written(tmp_path, dst)


def test_pth_output_loads_with_weights_only_and_mmap(tmp_path: Path) -> None:
    # The plain state_dict is aligned like torch's own files, so mmap loading works too.
    record = BY_NAME["dtypes"]
    dst = tmp_path / "out.pt"
    run_convert(fixture_path(record), dst, to="pth")
    loaded = torch_load_weights_only(dst, mmap=True)
    assert_same_tensors(dict(loaded), ground_truth_weights(record), ordered=True)


# -- byte order ------------------------------------------------------------------------------------


def big_endian_copy(name: str, folder: Path) -> Path:
    """The fixture rewritten as a big-endian machine saves it (records swapped, `byteorder`
    = big), with the generator's own rewriter."""
    import sys

    fixtures = str(fixture_path(BY_NAME[name]).parents[1])
    if fixtures not in sys.path:
        sys.path.append(fixtures)
    from fixturegen.zip_rewrite import rewrite_big_endian

    target = folder / f"{name}_big_endian.pt"
    rewrite_big_endian(fixture_path(BY_NAME[name]), target)
    return target


@pytest.mark.parametrize("name", ["tensor_layouts", "tied_weights_state_dict", "batchnorm_state_dict"])
@pytest.mark.parametrize("dedupe", [False, True])
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_big_endian_source_to_safetensors(name: str, dedupe: bool, dtype: str | None, tmp_path: Path) -> None:
    # Swapped records cannot be copied as they are: each tensor is read, swapped, written.
    src = big_endian_copy(name, tmp_path)
    source = dict(torch_load_trusted(src))
    assert_same_tensors(source, ground_truth_weights(BY_NAME[name]))  # the rewrite is faithful
    target = getattr(torch, dtype) if dtype else None
    expected = {key: t.to(target) if target is not None and t.is_floating_point() else t for key, t in source.items()}
    dst = tmp_path / "out.safetensors"
    run_convert(src, dst, dedupe=dedupe, dtype=dtype)
    actual = load_output(dst, "safetensors")
    aliases = json.loads(safetensors_metadata(dst).get(ALIASES_KEY, "{}"))
    assert bool(aliases) == (dedupe and bool(tied_groups(source)))
    for alias, kept in aliases.items():
        actual[alias] = actual[kept]
    assert_same_tensors(actual, expected)
