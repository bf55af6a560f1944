"""The fixture generator writes what index.json claims, checked against torch and safetensors."""

from __future__ import annotations

import argparse
import collections
import json
import pickle
import re
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from support import groundtruth as gt
from torch import nn

INDEX = gt.load_fixture_index()
RECORDS = {record["name"]: record for record in INDEX}
RECORD_FIELDS = {
    "name", "file", "format", "style", "weights_root", "model", "whole_model", "device",
    "byteorder", "key_prefix", "locations", "derived_from",
}  # fmt: skip
FORMATS = {
    "torch-zip", "torch-legacy", "torch-legacy-tar", "torchscript", "safetensors",
    "sharded-safetensors", "sharded-bin", "raw-pickle",
}  # fmt: skip
COMMITTED_BUDGET_BYTES = 3_000_000
# Formats whose readers return keys in an order of their own, not state_dict()'s.
UNORDERED_FORMATS = {"safetensors", "sharded-safetensors", "sharded-bin"}


def records(predicate: Callable[[dict[str, Any]], bool]) -> list[Any]:
    return [pytest.param(r, id=r["name"]) for r in INDEX if predicate(r)]


def is_torch(record: dict[str, Any]) -> bool:
    return record["format"] in gt.TORCH_FORMATS


def path_of(record: Mapping[str, Any]) -> Path:
    return gt.fixture_path(record)


# --- the index ---------------------------------------------------------------------------


def test_index_records_have_the_documented_fields() -> None:
    assert len(RECORDS) == len(INDEX), "fixture names are unique"
    for record in INDEX:
        assert set(record) == RECORD_FIELDS, record["name"]
        assert record["format"] in FORMATS
        assert path_of(record).exists(), record["file"]
        assert record["model"] is None or record["model"] in gt.tutorial_models().MODEL_CLASSES
        assert record["derived_from"] is None or record["derived_from"] in RECORDS
        if is_torch(record) or record["format"] == "torchscript":
            assert record["device"] in record["locations"]


def test_committed_folder_holds_only_indexed_files_within_budget() -> None:
    indexed = {path_of(record) for record in INDEX}
    files = [p for p in gt.COMMITTED_DIR.rglob("*") if p.is_file() and p.name != "index.json"]
    for file in files:
        assert any(file == p or p in file.parents for p in indexed), f"stray file {file}"
    assert sum(f.stat().st_size for f in files) < COMMITTED_BUDGET_BYTES


def test_index_covers_every_required_way_of_saving() -> None:
    formats = {record["format"] for record in INDEX}
    assert formats == FORMATS
    assert {"", "state_dict", "model_state_dict", "model", "module"} <= {record["weights_root"] for record in INDEX}
    assert {"cpu", "cuda:0", "cuda:1"} <= {record["device"] for record in INDEX}
    assert {"module.", "_orig_mod.", "model."} <= {record["key_prefix"] for record in INDEX}
    assert {"little", "big"} <= {record["byteorder"] for record in INDEX}


# --- weights against the models -----------------------------------------------------------


@pytest.mark.parametrize("record", records(lambda r: r["model"] is not None))
def test_weights_have_the_keys_of_the_models_state_dict(record: dict[str, Any]) -> None:
    keys = list(gt.ground_truth_weights(record))
    expected = gt.expected_state_dict_keys(record)
    if record["format"] in UNORDERED_FORMATS:
        assert sorted(keys) == sorted(expected)
    else:
        assert keys == expected


@pytest.mark.parametrize("record", records(lambda r: r["derived_from"] is not None))
def test_derived_fixture_holds_its_sources_weights(record: dict[str, Any]) -> None:
    source = gt.ground_truth_weights(RECORDS[record["derived_from"]])
    source = {RECORDS[record["derived_from"]]["key_prefix"] + k: v for k, v in source.items()}
    prefix = record["key_prefix"]
    for key, tensor in gt.ground_truth_weights(record).items():
        assert gt.tensors_equal(tensor, source[key.removeprefix(prefix)]), key


@pytest.mark.parametrize("record", records(is_torch))
def test_storage_locations_are_those_the_index_names(record: dict[str, Any]) -> None:
    assert gt.storage_locations(path_of(record)) == set(record["locations"])


# --- whole models --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pickled_class"),
    [
        ("cnn_whole_model_main", "__main__.CNN"),
        ("nn_whole_model_package", "models.net.NN"),
        ("nested_containers_whole_model_package", "models.net.Residual"),
        ("yolo_style_whole_model_in_dict", "models.yolo.BatchNormNet"),
        ("cuda0_whole_model", "__main__.CNN"),
    ],
)
def test_whole_model_pickles_its_class_where_the_script_defined_it(name: str, pickled_class: str) -> None:
    pickled = gt.globals_of(gt.zip_record(path_of(RECORDS[name]), "/data.pkl"))
    assert pickled_class in pickled
    assert not any(g.startswith("tutorial_models.") for g in pickled)


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("cnn_whole_model_main", AttributeError, "Can't get attribute 'CNN'"),
        ("nn_whole_model_package", ModuleNotFoundError, "No module named 'models'"),
        ("legacy_whole_model", ModuleNotFoundError, "No module named 'models'"),
    ],
)
def test_whole_model_does_not_load_without_its_class(name: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        torch.load(path_of(RECORDS[name]), weights_only=False)  # noqa: TID251


def test_legacy_whole_model_records_its_class_source() -> None:
    path = path_of(RECORDS["legacy_whole_model"])
    assert "models.net.BatchNormNet" in gt.globals_of(gt.legacy_main_pickle(path))
    raw = path.read_bytes()
    assert b"models/net.py" in raw and b"class BatchNormNet(nn.Module):" in raw


def test_non_persistent_buffer_is_pickled_with_the_whole_model_only() -> None:
    model = gt.torch_load_trusted(path_of(RECORDS["nonpersistent_buffer_whole_model"]))
    assert "causal_mask" in model._buffers
    assert model._non_persistent_buffers_set == {"causal_mask"}
    assert "causal_mask" not in model.state_dict()


def test_none_parameters_and_buffers_survive_in_the_whole_model() -> None:
    model = gt.torch_load_trusted(path_of(RECORDS["none_params_whole_model_package"]))
    assert model._parameters["gate"] is None
    assert model._buffers["cache"] is None
    assert model.proj._parameters["bias"] is None


def test_tied_weights_are_one_storage_in_model_and_state_dict() -> None:
    model = gt.torch_load_trusted(path_of(RECORDS["tied_weights_whole_model"]))
    assert model.head.weight is model.embed.weight
    state = gt.torch_load_trusted(path_of(RECORDS["tied_weights_state_dict"]))
    assert state["head.weight"].data_ptr() == state["embed.weight"].data_ptr()


# --- training checkpoints -----------------------------------------------------------------

OPTIMIZER_PATHS = {
    "imagenet_style_checkpoint": ("optimizer", "SGD-momentum"),
    "model_optimizer_checkpoint": ("optimizer", "Adam"),
    "general_checkpoint_tensor_loss": ("optimizer_state_dict", "AdamW"),
    "general_checkpoint_float_loss": ("optimizer_state_dict", "RMSprop"),
    "lightning_checkpoint": ("optimizer_states.0", "Adam"),
    "timm_checkpoint_with_ema": ("optimizer", "SGD-momentum"),
    "cuda0_model_optimizer": ("optimizer", "Adam"),
}
STATE_KEYS = {
    "Adam": {"step", "exp_avg", "exp_avg_sq"},
    "AdamW": {"step", "exp_avg", "exp_avg_sq"},
    "SGD-momentum": {"momentum_buffer"},
    "RMSprop": {"step", "square_avg"},
}


@pytest.mark.parametrize(("name", "where"), OPTIMIZER_PATHS.items())
def test_optimizer_state_is_populated_by_real_steps(name: str, where: tuple[str, str]) -> None:
    path, kind = where
    record = RECORDS[name]
    optimizer = gt.weights_at(gt.torch_load_trusted(path_of(record)), path)
    parameters = list(gt.tutorial_models().MODEL_CLASSES[record["model"]]().parameters())
    assert optimizer["param_groups"][0]["params"] == list(range(len(parameters)))
    assert len(optimizer["state"]) == len(parameters)
    for state in optimizer["state"].values():
        assert set(state) == STATE_KEYS[kind]
        assert "step" not in state or float(state["step"]) == 2.0


def test_general_checkpoint_loss_is_a_tensor_in_one_and_a_float_in_the_other() -> None:
    tensor_loss = gt.torch_load_trusted(path_of(RECORDS["general_checkpoint_tensor_loss"]))
    float_loss = gt.torch_load_trusted(path_of(RECORDS["general_checkpoint_float_loss"]))
    assert isinstance(tensor_loss["loss"], torch.Tensor) and tensor_loss["loss"].dim() == 0
    assert type(float_loss["loss"]) is float
    assert set(tensor_loss) == {"epoch", "model_state_dict", "optimizer_state_dict", "loss"}


@pytest.mark.parametrize(
    ("name", "hparams_type"),
    [
        ("lightning_checkpoint", dict),
        ("lightning_checkpoint_namespace_hparams", argparse.Namespace),
    ],
)
def test_lightning_checkpoint_has_lightnings_layout(name: str, hparams_type: type) -> None:
    checkpoint = gt.torch_load_trusted(path_of(RECORDS[name]))
    assert {
        "epoch", "global_step", "pytorch-lightning_version", "state_dict", "optimizer_states",
        "lr_schedulers", "hyper_parameters", "callbacks", "loops",
    } <= set(checkpoint)  # fmt: skip
    assert type(checkpoint["hyper_parameters"]) is hparams_type
    assert all(key.startswith("model.") for key in checkpoint["state_dict"])


# --- serialization variants ----------------------------------------------------------------


def test_legacy_tar_has_the_four_members_and_refuses_weights_only() -> None:
    path = path_of(RECORDS["legacy_tar_state_dict"])
    with tarfile.open(path) as tar:
        assert set(tar.getnames()) == {"sys_info", "pickle", "tensors", "storages"}
    with pytest.raises(RuntimeError, match="legacy .tar format"):
        torch.load(path, weights_only=True)  # noqa: TID251


def test_legacy_tar_keeps_views_offsets_strides_and_sharing() -> None:
    layouts = gt.torch_load_trusted(path_of(RECORDS["legacy_tar_layouts"]))
    assert_views_as_saved(layouts)


def test_tensor_layouts_keep_views_offsets_strides_and_sharing() -> None:
    layouts = gt.torch_load_trusted(path_of(RECORDS["tensor_layouts"]))
    assert_views_as_saved(layouts)
    assert layouts["tied.a"] is layouts["tied.b"]


def assert_views_as_saved(layouts: dict[str, torch.Tensor]) -> None:
    base = layouts["slice.head"].untyped_storage().data_ptr()
    for key in ("slice.middle", "slice.tail", "strided.every_other"):
        assert layouts[key].untyped_storage().data_ptr() == base
    assert [layouts[k].storage_offset() for k in ("slice.head", "slice.middle", "slice.tail")] == [
        0, 16, 48,
    ]  # fmt: skip
    assert layouts["strided.every_other"].stride() == (2,)
    assert layouts["transposed"].stride() == (1, 4) and not layouts["transposed"].is_contiguous()
    assert layouts["expanded"].stride() == (0, 1)
    assert layouts["scalar"].dim() == 0 and layouts["int_scalar"].dtype == torch.int64
    assert layouts["empty"].numel() == 0 and layouts["empty_2d"].shape == (0, 3)


def test_dtypes_fixture_holds_every_required_dtype() -> None:
    tensors = gt.ground_truth_weights(RECORDS["dtypes"])
    required = {
        "float16", "bfloat16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool",
        "complex64", "float8_e4m3fn",
    }  # fmt: skip
    assert required <= set(tensors)
    for name, tensor in tensors.items():
        assert tensor.dtype == getattr(torch, name)


def test_big_endian_fixture_stores_swapped_aligned_records() -> None:
    path = path_of(RECORDS["big_endian_dtypes"])
    assert gt.zip_record(path, "/byteorder") == b"big"
    tensors = gt.torch_load_trusted(path)
    with zipfile.ZipFile(path) as archive:
        records = {archive.read(n) for n in archive.namelist() if "/data/" in n}
    assert records == {big_endian_bytes(t) for t in tensors.values()}
    assert all(offset % 64 == 0 for _, offset in gt.data_record_offsets(path))
    mapped = torch.load(path, mmap=True, weights_only=True)  # noqa: TID251
    assert all(gt.tensors_equal(mapped[k], tensors[k]) for k in tensors)


def big_endian_bytes(tensor: torch.Tensor) -> bytes:
    unit = tensor.element_size() // (2 if tensor.dtype.is_complex else 1)
    little = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
    return little.reshape(-1, unit)[:, ::-1].tobytes()


def test_torch_writes_its_records_64_byte_aligned() -> None:
    offsets = list(gt.data_record_offsets(path_of(RECORDS["dtypes"])))
    assert offsets and all(offset % 64 == 0 for _, offset in offsets)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the failure needs a machine without GPU")
@pytest.mark.parametrize("record", records(lambda r: str(r["device"]).startswith("cuda")))
def test_cuda_fixture_loads_only_with_map_location(record: dict[str, Any]) -> None:
    with pytest.raises(RuntimeError, match="CUDA device but torch.cuda.is_available"):
        gt.torch_load_trusted(path_of(record), map_location=None)
    weights = gt.weights_at(gt.torch_load_trusted(path_of(record)), record["weights_root"])
    assert all(t.device.type == "cpu" for t in weights.values())
    if not record["whole_model"]:  # the same holds for torch's safe loader
        with pytest.raises(RuntimeError, match="CUDA device"):
            torch.load(path_of(record), weights_only=True)  # noqa: TID251
        torch.load(path_of(record), map_location="cpu", weights_only=True)  # noqa: TID251


def test_cuda_training_checkpoint_keeps_step_counters_on_cpu() -> None:
    counts: collections.Counter[str] = collections.Counter()

    def count(storage: Any, location: str) -> Any:
        counts[location] += 1
        return storage

    gt.torch_load_trusted(path_of(RECORDS["cuda0_model_optimizer"]), map_location=count)
    parameters = 6  # CNN: two convs and a linear, weight and bias each
    assert counts == {"cpu": parameters, "cuda:0": parameters * 3}


def test_pickle_protocol_4_fixture_is_refused_by_weights_only() -> None:
    path = path_of(RECORDS["pickle_protocol_4"])
    assert gt.zip_record(path, "/data.pkl")[:2] == b"\x80\x04"
    with (
        pytest.warns(UserWarning, match="Detected pickle protocol 4"),
        pytest.raises(pickle.UnpicklingError, match="Weights only load failed"),
    ):
        torch.load(path, weights_only=True)  # noqa: TID251


def test_no_crc32_fixture_has_zero_crcs_that_torch_ignores() -> None:
    path = path_of(RECORDS["no_crc32"])
    with zipfile.ZipFile(path) as archive:
        assert {info.CRC for info in archive.infolist()} == {0}
        assert archive.testzip() is not None  # Python's zipfile does check them
    assert gt.torch_load_trusted(path)


def test_no_byteorder_fixture_lacks_the_record() -> None:
    with zipfile.ZipFile(path_of(RECORDS["no_byteorder_record"])) as archive:
        assert not any(name.endswith("/byteorder") for name in archive.namelist())


def test_exotic_tensors_keep_their_layouts() -> None:
    tensors = gt.torch_load_trusted(path_of(RECORDS["exotic_tensors"]))
    assert tensors["sparse_coo"].layout == torch.sparse_coo
    assert tensors["sparse_csr"].layout == torch.sparse_csr
    assert tensors["quantized_per_tensor"].qscheme() == torch.per_tensor_affine
    assert tensors["quantized_per_channel"].qscheme() == torch.per_channel_affine
    assert isinstance(tensors["parameter"], nn.Parameter)


# --- other formats -------------------------------------------------------------------------


@pytest.mark.parametrize("record", records(lambda r: r["format"] == "torchscript"))
def test_torchscript_fixture_is_an_archive_torch_load_refuses(record: dict[str, Any]) -> None:
    path = path_of(record)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert any(n.endswith("/constants.pkl") for n in names)
    assert any("/code/" in n for n in names)
    with (
        pytest.warns(UserWarning, match="looks like a TorchScript archive"),
        pytest.raises(RuntimeError, match="TorchScript archives"),
    ):
        torch.load(path, weights_only=True)  # noqa: TID251


def test_safetensors_fixture_carries_its_metadata() -> None:
    with safe_open(path_of(RECORDS["safetensors"]), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "source": "cnn_state_dict.pth"}


@pytest.mark.parametrize(
    ("name", "index_name", "shard_pattern"),
    [
        (
            "sharded_safetensors",
            "model.safetensors.index.json",
            r"model-0000\d-of-00002\.safetensors",
        ),
        ("sharded_bin", "pytorch_model.bin.index.json", r"pytorch_model-0000\d-of-00002\.bin"),
    ],
)
def test_sharded_folder_follows_the_hugging_face_layout(name: str, index_name: str, shard_pattern: str) -> None:
    folder = path_of(RECORDS[name])
    index = json.loads((folder / index_name).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) == 2 and all(re.fullmatch(shard_pattern, s) for s in shards)
    assert {p.name for p in folder.iterdir()} == shards | {index_name}
    weights = gt.load_sharded(folder)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in weights.values())


def test_safetensors_dtypes_round_trip() -> None:
    tensors = load_file(path_of(RECORDS["safetensors_dtypes"]))
    assert {"float8_e4m3fn", "bfloat16", "uint64", "complex64", "bool"} <= set(tensors)


def test_raw_pickle_holds_plain_values_only() -> None:
    path = path_of(RECORDS["raw_pickle_bin"])
    assert b"torch" not in path.read_bytes()
    content = gt.read_raw_pickle(path)
    assert content["config"]["hidden_size"] == 16 and content["special_token_ids"] == {0, 1}


def test_weights_at_follows_mappings_sequences_and_modules() -> None:
    model = gt.tutorial_models().NN()
    checkpoint = {"runs": [{"net": model}]}
    assert list(gt.weights_at(checkpoint, "runs.0.net")) == list(model.state_dict())
    assert gt.weights_at(checkpoint, "") is checkpoint


# --- the generator itself ------------------------------------------------------------------


# How far regenerated trained fixtures may move from the committed ones made on
# another CPU. Adam, AdamW and RMSprop (lr 1e-3) turn a gradient near zero, whose sign
# a kernel's rounding can flip, into a step of up to about lr: two steps
# (`fixturegen.training.TRAINING_STEPS`) can move a weight by up to 4e-3 where
# another CPU rounds that gradient the other way. Measured: ATen's default, AVX2 and
# AVX-512 kernels against each other and the committed files, up to 1.6e-4 (Adam,
# the CNN's conv2.weight); every other fixture up to 1.3e-6.
REGENERATION_ATOL = 4e-3
REGENERATION_RTOL = 0.0


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("fixtures")
    gt.generate(out_dir)
    return out_dir


@pytest.mark.slow
def test_regenerated_index_matches_the_committed_one(regenerated: Path) -> None:
    assert gt.load_fixture_index(regenerated) == INDEX


@pytest.mark.slow
@pytest.mark.parametrize("record", records(lambda r: True))
def test_regenerated_fixture_equals_the_committed_one(record: dict[str, Any], regenerated: Path) -> None:
    # Exact in structure; trained values within the tolerance, since the committed
    # files were trained on another machine, whose kernels round differently.
    gt.assert_same_structure_and_close(
        load_any(record, regenerated), load_any(record, gt.COMMITTED_DIR), REGENERATION_ATOL, REGENERATION_RTOL
    )


def load_any(record: dict[str, Any], directory: Path) -> Any:
    path = gt.fixture_path(record, directory)
    if is_torch(record):
        return gt.torch_load_trusted(path)
    if record["format"] == "raw-pickle":
        return gt.read_raw_pickle(path)
    if record["format"] == "safetensors":
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata()
        # safetensors keeps __metadata__ in a hash map: its order differs from run to run.
        return {"metadata": dict(sorted(metadata.items())), "tensors": load_file(path)}
    return gt.ground_truth_weights(record, directory)


@pytest.mark.slow
def test_only_writes_the_named_fixtures_and_merges_the_index(tmp_path: Path) -> None:
    gt.generate(tmp_path, names=["legacy_tar_layouts"])
    index = gt.generate(tmp_path, names=["cuda0_model_optimizer", "batchnorm_state_dict"])
    assert [r["name"] for r in index] == [
        "batchnorm_state_dict", "legacy_tar_layouts", "cuda0_model_optimizer",
    ]  # fmt: skip
    for record in index:
        gt.assert_same_structure_and_close(
            load_any(record, tmp_path), load_any(record, gt.COMMITTED_DIR), REGENERATION_ATOL, REGENERATION_RTOL
        )


@pytest.mark.slow
def test_unknown_fixture_name_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"\(2\): .*unknown fixture\(s\): no_such_fixture"):
        gt.generate(tmp_path, names=["no_such_fixture"])


@pytest.mark.slow
def test_big_fixtures_are_written_on_request(tmp_path: Path) -> None:
    index = gt.generate(tmp_path, names=["many_tensors", "many_tensors_safetensors", "large_tensor"])
    by_name = {record["name"]: record for record in index}
    many = gt.ground_truth_weights(by_name["many_tensors"], tmp_path)
    assert len(many) == 2000
    twin = gt.ground_truth_weights(by_name["many_tensors_safetensors"], tmp_path)
    assert all(gt.tensors_equal(many[k], twin[k]) for k in many)
    assert gt.fixture_path(by_name["large_tensor"], tmp_path).stat().st_size > 64 * 2**20
    assert not any(record["name"] in RECORDS for record in index), "big ones are not committed"
