"""ckpttool's reading of every fixture, compared with what torch and safetensors load.

For each record of ``fixtures/files/index.json`` (and the big fixtures, generated on
the fly): the format, the weights root, the weights' keys in ``state_dict()`` order,
and for every tensor its dtype, shape, stride, storage offset, saved location and
the storage it shares with others. Torch loads the files trusted, here only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from support import groundtruth as gt
from support.layouts import (
    Layout,
    ckpt,
    load_torch_file,
    ref_layout,
    ref_storage_groups,
    tensors_in,
    torch_layout,
    torch_storage_groups,
)

from ckpttool.checkpoint import PickledObject
from ckpttool.formats import detect, read_checkpoint
from ckpttool.weights import NamedTensor, Weights, all_tensors, find_weights

INDEX = gt.load_fixture_index()
SHARDED_FORMATS = frozenset({"sharded-safetensors", "sharded-bin"})
# safetensors headers keep no insertion order and shards split the keys, so for
# these the order of a reader's keys is its own; everything else keeps state_dict order.
UNORDERED_FORMATS = SHARDED_FORMATS | {"safetensors"}
# The big fixtures (`generate.py --big`), not committed: name -> format in their record.
BIG_FIXTURES = {
    "many_tensors": "torch-zip",
    "many_tensors_safetensors": "safetensors",
    "large_tensor": "torch-zip",
}
# What collection knows of a big fixture before it is generated (none has a model).
BIG_RECORDS = [{"name": n, "format": f, "model": None} for n, f in BIG_FIXTURES.items()]
Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class Case:
    """One fixture: its index record and the folder its file lies in."""

    record: dict[str, Any]
    directory: Path

    @property
    def path(self) -> Path:
        return gt.fixture_path(self.record, self.directory)

    @property
    def format(self) -> str:
        return str(self.record["format"])


@pytest.fixture(scope="session")
def big_fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("big_fixtures")
    written = {record["name"]: record["format"] for record in gt.generate(out, BIG_FIXTURES)}
    assert written == BIG_FIXTURES, "the big fixtures changed; update BIG_FIXTURES"
    return out


@pytest.fixture
def case(request: pytest.FixtureRequest) -> Case:
    kind, name = request.param
    if kind == "big":
        directory = request.getfixturevalue("big_fixture_dir")
        return Case(gt.fixture_record(name, directory), directory)
    return Case(gt.fixture_record(name), gt.COMMITTED_DIR)


def cases(wanted: Predicate = lambda _: True) -> pytest.MarkDecorator:
    """Indirect parameters for `case`: committed fixtures, then the big ones (slow)."""
    committed = [pytest.param(("committed", r["name"]), id=r["name"]) for r in INDEX if wanted(r)]
    big = [pytest.param(("big", r["name"]), id=r["name"], marks=pytest.mark.slow) for r in BIG_RECORDS if wanted(r)]
    return pytest.mark.parametrize("case", committed + big, indirect=True)


def holds_weights(record: Mapping[str, Any]) -> bool:
    return bool(record["format"] != "raw-pickle")


def is_torch(record: Mapping[str, Any]) -> bool:
    return record["format"] in gt.TORCH_FORMATS


def has_ordered_model_keys(record: Mapping[str, Any]) -> bool:
    return record["model"] is not None and record["format"] not in UNORDERED_FORMATS


def weights_of(case: Case) -> Weights:
    return find_weights(ckpt(case.path).root)


def truth_weights(case: Case) -> dict[str, torch.Tensor]:
    """The weights as torch loaded them; for torch files, from the location-recording load."""
    if is_torch(case.record):
        loaded = gt.weights_at(load_torch_file(case.path).obj, case.record["weights_root"])
        return dict(loaded)
    return gt.ground_truth_weights(case.record, case.directory)


def expected_layouts(case: Case, named: dict[str, torch.Tensor]) -> dict[str, Layout]:
    """Each tensor's Layout, its device being the location the file saved it with."""
    if is_torch(case.record):
        loaded = load_torch_file(case.path)
        return {k: torch_layout(t, loaded.location_of(t)) for k, t in named.items()}
    # safetensors names no location (readers give cpu); TorchScript and .bin shards
    # were loaded without recording one, and their index names a single location.
    return {k: torch_layout(t, case.record["device"]) for k, t in named.items()}


# -- format and weights root ------------------------------------------------------------


@cases()
def test_read_format_is_the_index_format(case: Case) -> None:
    assert ckpt(case.path).format == case.format


@cases()
def test_detect_names_the_index_format(case: Case) -> None:
    assert detect(str(case.path)) == case.format


@cases(holds_weights)
def test_weights_root_is_the_index_root(case: Case) -> None:
    weights = weights_of(case)
    assert weights.root == case.record["weights_root"]
    assert weights.kind == expected_weights_kind(case)


def expected_weights_kind(case: Case) -> str:
    if case.record["whole_model"]:
        return "module"
    return "script_module" if case.format == "torchscript" else "state_dict"


def test_raw_pickle_has_no_weights_and_no_tensors() -> None:
    record = gt.fixture_record("raw_pickle_bin")
    path = gt.fixture_path(record)
    assert tensors_in(gt.read_raw_pickle(path)) == []  # nothing for ckpttool to find
    checkpoint = read_checkpoint(str(path))
    weights = find_weights(checkpoint.root)
    assert (weights.root, weights.kind, weights.tensors) == (None, "none", [])
    assert all_tensors(checkpoint.root) == []


# -- weights: keys, layouts, shared storages ----------------------------------------------


@cases(holds_weights)
def test_weights_keys_are_the_state_dict_keys(case: Case) -> None:
    keys = [t.key for t in weights_of(case).tensors]
    truth = list(truth_weights(case))
    if case.format in UNORDERED_FORMATS:
        assert sorted(keys) == sorted(truth)
    else:
        assert keys == truth


@cases(has_ordered_model_keys)
def test_weights_keys_follow_the_models_state_dict(case: Case) -> None:
    """Against the model class: `model.state_dict()` keys, in order, with the file's prefix."""
    keys = [t.key for t in weights_of(case).tensors]
    assert keys == gt.expected_state_dict_keys(case.record)


@cases(holds_weights)
def test_weights_layouts_match_torch(case: Case) -> None:
    truth = truth_weights(case)
    expected = expected_layouts(case, truth)
    found = {t.key: ref_layout(t.tensor) for t in weights_of(case).tensors}
    assert found == expected


@cases(holds_weights)
def test_weights_share_storages_as_torch_does(case: Case) -> None:
    truth = truth_weights(case)
    assert ref_storage_groups(weights_of(case).tensors) == torch_storage_groups(list(truth.items()))


# -- every tensor in the file ----------------------------------------------------------------


@cases(is_torch)
def test_all_tensors_are_every_tensor_torch_loads(case: Case) -> None:
    loaded = load_torch_file(case.path)
    truth = tensors_in(loaded.obj)
    found = all_tensors(ckpt(case.path).root)
    assert sorted(t.key for t in found) == sorted(key for key, _ in truth)
    expected = {key: torch_layout(t, loaded.location_of(t)) for key, t in truth}
    assert {t.key: ref_layout(t.tensor) for t in found} == expected


@cases(is_torch)
def test_all_tensors_share_storages_as_torch_does(case: Case) -> None:
    truth = tensors_in(load_torch_file(case.path).obj)
    found = all_tensors(ckpt(case.path).root)
    assert ref_storage_groups(found) == torch_storage_groups(truth)


@cases(is_torch)
def test_storage_sizes_match_torch(case: Case) -> None:
    truth = dict(tensors_in(load_torch_file(case.path).obj))
    for item in all_tensors(ckpt(case.path).root):
        tensor = truth[item.key]
        if tensor.layout == torch.strided and item.tensor.storage is not None:
            assert item.tensor.storage.nbytes == tensor.untyped_storage().nbytes(), item.key


@cases(is_torch)
def test_storage_locations_are_the_files(case: Case) -> None:
    checkpoint = ckpt(case.path)
    locations = {storage.location for storage in checkpoint.storages.values()}
    assert locations == set(load_torch_file(case.path).file_locations)
    assert locations == set(case.record["locations"])


@cases(is_torch)
def test_byteorder_is_the_files(case: Case) -> None:
    checkpoint = ckpt(case.path)
    assert checkpoint.byteorder == case.record["byteorder"]
    assert {s.byteorder for s in checkpoint.storages.values()} == {case.record["byteorder"]}


# -- model corners ------------------------------------------------------------------------------


def committed(name: str) -> Case:
    return Case(gt.fixture_record(name), gt.COMMITTED_DIR)


def keys_of(case: Case) -> list[str]:
    return [t.key for t in weights_of(case).tensors]


def module_table(case: Case, table: str, module: str = "") -> dict[Any, Any]:
    """`_parameters`/`_buffers` of a pickled module (by dotted child path) as ckpttool read it."""
    node = ckpt(case.path).root
    for part in module.split(".") if module else []:
        node = node.attributes["_modules"][part]
    assert isinstance(node, PickledObject)
    table_value: dict[Any, Any] = node.attributes[table]
    return table_value


@pytest.mark.parametrize("name", ["nonpersistent_buffer_state_dict", "nonpersistent_buffer_whole_model"])
def test_non_persistent_buffer_is_not_a_weight(name: str) -> None:
    case = committed(name)
    assert "causal_mask" not in keys_of(case)
    assert "position_scale" in keys_of(case)


def test_non_persistent_buffer_is_still_a_tensor_of_the_whole_model() -> None:
    case = committed("nonpersistent_buffer_whole_model")
    assert "causal_mask" in module_table(case, "_buffers")  # the file does hold it
    assert "causal_mask" in [t.key for t in all_tensors(ckpt(case.path).root)]


def test_none_parameters_and_buffers_are_skipped() -> None:
    case = committed("none_params_whole_model_package")
    # The pickled module really holds the None entries state_dict() skips.
    assert module_table(case, "_parameters")["gate"] is None
    assert module_table(case, "_buffers")["cache"] is None
    assert module_table(case, "_parameters", "proj")["bias"] is None
    assert keys_of(case) == ["scale", "proj.weight"]


@pytest.mark.parametrize("name", ["tied_weights_state_dict", "tied_weights_whole_model"])
def test_tied_weights_share_one_storage(name: str) -> None:
    weights = weights_of(committed(name)).mapping()
    assert weights["head.weight"].storage is weights["embed.weight"].storage
    assert weights["head.weight"].offset == weights["embed.weight"].offset == 0


def test_views_of_one_storage_share_it() -> None:
    weights = weights_of(committed("tensor_layouts")).mapping()
    slices = {weights[k].storage for k in ("slice.head", "slice.middle", "slice.tail")}
    assert len(slices) == 1 and weights["strided.every_other"].storage in slices
    assert weights["tied.a"].storage is weights["tied.b"].storage
    assert weights["tied.a"].storage not in slices


# -- serialization variants ---------------------------------------------------------------------


def test_big_endian_file_reports_big_byteorder() -> None:
    case = committed("big_endian_dtypes")
    checkpoint = read_checkpoint(str(case.path))
    assert checkpoint.byteorder == "big"
    assert {s.byteorder for s in checkpoint.storages.values()} == {"big"}
    assert gt.zip_record(case.path, "/byteorder") == b"big"


@pytest.mark.parametrize("name", ["safetensors", "safetensors_dtypes"])
def test_safetensors_metadata_is_the_headers(name: str) -> None:
    case = committed(name)
    with safe_open(str(case.path), framework="pt") as f:
        header_metadata = f.metadata()
    assert header_metadata, "the fixture carries __metadata__"
    assert read_checkpoint(str(case.path)).metadata == header_metadata


# -- sharded folders --------------------------------------------------------------------------


def sharded_cases() -> list[Any]:
    return [pytest.param(r["name"], id=r["name"]) for r in INDEX if r["format"] in SHARDED_FORMATS]


def index_file(folder: Path) -> Path:
    (found,) = folder.glob("*.index.json")
    return found


def summary(named: list[NamedTensor]) -> list[tuple[str, Layout]]:
    return [(t.key, ref_layout(t.tensor)) for t in named]


@pytest.mark.parametrize("name", sharded_cases())
def test_sharded_folder_and_its_index_read_the_same(name: str) -> None:
    case = committed(name)
    through_folder = read_checkpoint(str(case.path))
    through_index = read_checkpoint(str(index_file(case.path)))
    assert through_folder.format == through_index.format
    folder_weights = find_weights(through_folder.root).tensors
    assert summary(folder_weights) == summary(find_weights(through_index.root).tensors)
    truth = gt.load_sharded(case.path)
    assert sorted(t.key for t in folder_weights) == sorted(truth)
    assert {t.key: ref_layout(t.tensor) for t in folder_weights} == expected_layouts(case, truth)


@pytest.mark.parametrize("name", sharded_cases())
def test_sharded_checkpoint_lists_every_shard_file(name: str) -> None:
    case = committed(name)
    shards = {p.resolve() for p in case.path.iterdir() if not p.name.endswith(".index.json")}
    files = {Path(f).resolve() for f in read_checkpoint(str(case.path)).files}
    assert shards <= files


def test_sharded_bin_keys_keep_the_state_dict_order() -> None:
    """Torch shards are written in state_dict order and numbered, so the order is recoverable.

    Reading shard 00001 before 00002 gives the model's state_dict() order.
    """
    case = committed("sharded_bin")
    assert keys_of(case) == gt.expected_state_dict_keys(case.record)
