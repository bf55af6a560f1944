"""Megatron-Core `torch_dist` folders and NeMo 2 checkpoints, read as what torch loads.

The folders in `fixtures/megatron` were written by megatron-core 0.16.1 itself on CPU
(`fixtures/fixturegen/megatron_dist.py`): a tiny GPTModel on one rank (TP 1) and two
ranks (TP 2), hand-built sharded tensors and objects, Adam moments by parameter key,
a dp_reshardable buffer, and `common.pt`. Ground truth is torch's own
`dcp_to_torch_save`, run here on the committed folders (they are ours, so loading them
is safe), and the safetensors file the generator saved from it (for the pre-0.14
folder, whose `.metadata` names megatron's classes: torch cannot load it without
megatron-core).
"""

from __future__ import annotations

import pickle
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from conftest import cli_json
from hostile.builders import Op, call_global, global_ref, reduce_pickle, shell_touch, text, torch_zip, value, whole
from safetensors.torch import load_file

from ckpttool.formats.dcp import read_dcp
from ckpttool.formats.dcp_metadata import read_dcp_metadata
from ckpttool.ops.convert import layer_names, unstack_checkpoint
from ckpttool.tensordata import load_tensor
from ckpttool.weights import all_tensors

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "megatron"
LIVE = ("gpt_tp1", "gpt_tp2")  # folders torch reads without megatron-core
QKV = "decoder.layers.self_attention.linear_qkv.weight"
DP_BUFFER = "optimizer.distributed.dp_group_idx_0.gbuf_idx_0.dtype_(torch.float32, torch.float32).bucket_idx_0.exp_avg"


def _folder(name: str) -> Path:
    return FIXTURES / name


def _live_truth(folder: Path, tmp: Path) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(folder, tmp / "loaded.pt")
    loaded = torch.load(tmp / "loaded.pt", weights_only=False)  # from our own fixture: rng_state holds numpy arrays
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    """Every tensor torch loads from each folder, by its flat key; the committed copy must agree."""
    out = {}
    for name in LIVE:
        live = _live_truth(_folder(name), tmp_path_factory.mktemp(name))
        committed = load_file(FIXTURES / f"{name}.groundtruth.safetensors")
        assert live.keys() == committed.keys() and all(torch.equal(live[k], committed[k]) for k in live)
        out[name] = live
    out["nemo2"] = _live_truth(_folder("nemo2") / "weights", tmp_path_factory.mktemp("nemo2"))
    out["pre014_flat"] = load_file(FIXTURES / "pre014_flat.groundtruth.safetensors")
    return out


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every DCP tensor as ckpttool reads it (tensors inside object entries, such as the torch
    generator state in rng_state, are the objects' own)."""
    checkpoint = read_dcp(str(folder))
    saved = set(read_dcp_metadata(str(folder)).tensors)
    return {t.key: load_tensor(t.tensor) for t in all_tensors(checkpoint.root) if t.key in saved}


# -- reading -----------------------------------------------------------------------------------


def test_megatron_metadata_is_read_with_its_save_plans() -> None:
    from torch.distributed.checkpoint import FileSystemReader

    for name, plans in (("gpt_tp1", 1), ("gpt_tp2", 2)):
        meta = read_dcp_metadata(str(_folder(name)))
        theirs = FileSystemReader(str(_folder(name))).read_metadata()  # our own committed file
        assert meta.save_plans == plans == len(theirs.all_local_plans)  # type: ignore[attr-defined]
        assert {k: tuple(t.shape) for k, t in meta.tensors.items()} == {
            k: tuple(v.size) for k, v in theirs.state_dict_metadata.items() if hasattr(v, "size")
        }
        assert set(meta.entries) == {k for k, v in theirs.state_dict_metadata.items() if not hasattr(v, "size")}


@pytest.mark.parametrize("name", [*LIVE, "nemo2", "pre014_flat"])
def test_every_tensor_equals_what_torch_loads(truth: dict[str, dict[str, torch.Tensor]], name: str) -> None:
    ours = _read_tensors(_folder(name))
    assert ours.keys() == truth[name].keys()
    for key, tensor in ours.items():
        assert torch.equal(tensor, truth[name][key]), key


def test_inspect_shows_model_common_state_and_objects(cli: Callable[..., Result]) -> None:
    report = cli_json(cli("inspect", _folder("gpt_tp2"), "--format", "json"))
    assert report["weights"]["root"] == "model"
    keys = {t["key"] for t in report["weights"]["tensors"]}
    assert QKV in keys and len(keys) == 17
    shapes = {t["key"]: t["shape"] for t in report["weights"]["tensors"]}
    assert shapes[QKV] == [2, 32, 16]  # global: both layers, both tensor-parallel halves
    entries = report["entries"]
    assert entries["iteration"] == 42 and entries["args"]["hidden_size"] == 16
    assert entries["extra.per_rank/shard_1_2"] == [{"rank": 1, "seed": 8}]
    assert "model.decoder.layers.mlp.linear_fc1._extra_state/shard_0_2" in entries


def test_inspect_all_lists_optimizer_state_by_parameter_key(cli: Callable[..., Result]) -> None:
    report = cli_json(cli("inspect", _folder("gpt_tp2"), "--all", "--format", "json"))
    keys = {t["key"] for t in report["tensors"]}
    assert "optimizer.state.exp_avg.model.decoder.layers.mlp.linear_fc1.weight" in keys
    assert DP_BUFFER in keys


def test_optimizer_shows_state_by_parameter_key(
    cli: Callable[..., Result], truth: dict[str, dict[str, torch.Tensor]]
) -> None:
    (report,) = cli_json(cli("optimizer", _folder("gpt_tp2"), "--format", "json"))["optimizers"]
    assert report["names"] == "keys"
    expected = {
        key.removeprefix(f"optimizer.state.{moment}."): moment
        for key in truth["gpt_tp2"]
        for moment in ("exp_avg", "exp_avg_sq")
        if key.startswith(f"optimizer.state.{moment}.")
    }
    assert {s["name"] for s in report["state"]} == set(expected)
    for state in report["state"]:
        for moment, described in state["tensors"].items():
            tensor = truth["gpt_tp2"][f"optimizer.state.{moment}.{state['name']}"]
            assert described == {"shape": list(tensor.shape), "dtype": "float32"}


def test_nemo2_checkpoint_is_its_weights_folder(cli: Callable[..., Result]) -> None:
    nemo = cli_json(cli("inspect", _folder("nemo2"), "--format", "json"))
    plain = cli_json(cli("inspect", _folder("gpt_tp1"), "--format", "json"))
    assert nemo["tensors"] == plain["tensors"] and nemo["entries"] == plain["entries"]


def _with_common_state_entry(folder: Path, common: dict[str, Any]) -> None:
    """The newer layout: common.pt's values as the DCP object `common_state/shard_0_1`
    (a torch.save of a one-item list, as megatron-core saves objects), appended to a data file."""
    import io

    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    (folder / "common.pt").unlink()
    buffer = io.BytesIO()
    torch.save([common], buffer)
    data = folder / "__0_0.distcp"
    offset = data.stat().st_size
    data.write_bytes(data.read_bytes() + buffer.getvalue())
    metadata = pickle.loads((folder / ".metadata").read_bytes())  # our own committed file
    metadata.state_dict_metadata["common_state/shard_0_1"] = BytesStorageMetadata()
    info = _StorageInfo(data.name, offset, len(buffer.getvalue()))
    metadata.storage_data[MetadataIndex("common_state/shard_0_1")] = info
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


def _dcp_entry(report: dict[str, Any]) -> dict[str, Any]:
    """The folder's DCP entry of a folder scan (the files beside it are entries of their own)."""
    (entry,) = [f for f in report["files"] if f["format"] == "dcp"]
    return entry


def test_common_state_entry_is_merged_like_common_pt(cli: Callable[..., Result], tmp_path: Path) -> None:
    folder = Path(shutil.copytree(_folder("gpt_tp1"), tmp_path / "newer"))
    _with_common_state_entry(folder, {"iteration": 7, "checkpoint_version": 3.0})
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(folder, tmp_path / "loaded.pt")  # torch reads the folder
    loaded = torch.load(
        tmp_path / "loaded.pt", weights_only=False
    )  # our own fixture, and its rng_state holds numpy arrays
    assert loaded["common_state/shard_0_1"] == [{"iteration": 7, "checkpoint_version": 3.0}]
    report = cli_json(cli("inspect", folder, "--format", "json"))
    assert (report["entries"]["iteration"], report["entries"]["checkpoint_version"]) == (7, 3.0)
    assert report["weights"]["root"] == "model"
    scanned = _dcp_entry(cli_json(cli("scan", folder, "--format", "json")))
    assert scanned["verdict"] in ("safe", "needs-allowlist")


def test_a_model_saved_without_prefix_is_the_whole_folder(cli: Callable[..., Result], tmp_path: Path) -> None:
    """`model.sharded_state_dict(prefix="")`, no optimizer: the weights are every tensor, flat."""
    from dataclasses import replace

    folder = Path(shutil.copytree(_folder("gpt_tp2"), tmp_path / "bare"))
    metadata = pickle.loads((folder / ".metadata").read_bytes())  # our own committed file
    kept = {k.removeprefix("model."): v for k, v in metadata.state_dict_metadata.items() if "optimizer" not in k}
    metadata.state_dict_metadata = kept
    storage = {replace(i, fqn=i.fqn.removeprefix("model.")): v for i, v in metadata.storage_data.items()}
    metadata.storage_data = {i: v for i, v in storage.items() if i.fqn in kept}
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    report = cli_json(cli("inspect", folder, "--format", "json"))
    assert report["weights"]["root"] == "" and QKV in {t["key"] for t in report["weights"]["tensors"]}
    out = tmp_path / "bare.safetensors"
    assert cli("convert", folder, out).exit_code == 0
    expected, written = _live_truth(folder, tmp_path), load_file(out)
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)


# -- scan ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*LIVE, "nemo2", "pre014_flat"])
def test_real_folders_need_an_allowlist_never_dangerous(cli: Callable[..., Result], name: str) -> None:
    result = cli("scan", _folder(name), "--format", "json")
    scanned = _dcp_entry(cli_json(result))
    assert scanned["verdict"] == "needs-allowlist", scanned["problems"]
    assert result.exit_code == 0  # every file of the folder (common.pt, metadata.json) passes too
    assert all(f["verdict"] in ("safe", "needs-allowlist") for f in cli_json(result)["files"])
    named = {f"{g['module']}.{g['name']}": g["verdict"] for g in scanned["globals"]}
    assert named["argparse.Namespace"] == "needs-allowlist"  # common.pt's args: it was scanned
    assert all(v in ("safe", "needs-allowlist") for v in named.values())


def _all_commands(cli: Callable[..., Result], folder: Path, out: Path) -> dict[str, Result]:
    return {
        "inspect": cli("inspect", folder, "--all"),
        "stats": cli("inspect", folder, "--stats"),
        "scan": cli("scan", folder, "--format", "json"),
        "check": cli("check", folder),
        "diff": cli("diff", folder, _folder("gpt_tp1")),
        "convert": cli("convert", folder, out),
        "optimizer": cli("optimizer", folder),
    }


def _assert_dangerous_and_ran_nothing(results: dict[str, Result], marker: Path) -> dict[str, Any]:
    assert not marker.exists()
    scanned = _dcp_entry(cli_json(results["scan"]))
    assert (results["scan"].exit_code, scanned["verdict"]) == (1, "dangerous")
    assert results["check"].exit_code == 1
    for name, result in results.items():
        assert result.exit_code in (0, 1, 2), name
        assert len(result.stderr.splitlines()) <= 1, (name, result.stderr)
    return scanned  # type: ignore[no-any-return]


def test_hostile_common_pt_runs_nothing(cli: Callable[..., Result], tmp_path: Path, marker: Path) -> None:
    folder = Path(shutil.copytree(_folder("gpt_tp1"), tmp_path / "hostile"))
    (folder / "common.pt").write_bytes(torch_zip(reduce_pickle("os", "system", shell_touch(marker))))
    scanned = _assert_dangerous_and_ran_nothing(_all_commands(cli, folder, tmp_path / "out.safetensors"), marker)
    assert any(g["module"] == "os" and g["verdict"] == "dangerous" for g in scanned["globals"])


def _replace_entry(folder: Path, fqn: str, archive: bytes) -> None:
    """The object entry `fqn` pointed at `archive`, appended to a data file."""
    data = folder / "__0_0.distcp"
    offset = data.stat().st_size
    data.write_bytes(data.read_bytes() + archive)
    metadata = pickle.loads((folder / ".metadata").read_bytes())  # our own committed file
    for index, info in metadata.storage_data.items():
        if index.fqn == fqn:
            info.relative_path, info.offset, info.length = data.name, offset, len(archive)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


def _saved(value: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


EXTRA_STATE = "model.decoder.layers.self_attention.linear_qkv._extra_state/shard_0_2"


def test_hostile_object_entry_runs_nothing(cli: Callable[..., Result], tmp_path: Path, marker: Path) -> None:
    folder = Path(shutil.copytree(_folder("gpt_tp1"), tmp_path / "hostile"))
    _replace_entry(folder, "extra.shared/shard_0_1", torch_zip(reduce_pickle("os", "system", shell_touch(marker))))
    scanned = _assert_dangerous_and_ran_nothing(_all_commands(cli, folder, tmp_path / "out.safetensors"), marker)
    assert any(g["module"] == "os" and g["verdict"] == "dangerous" for g in scanned["globals"])


def test_transformer_engine_extra_state_is_scanned_as_the_pickle_it_holds(
    cli: Callable[..., Result], tmp_path: Path, marker: Path
) -> None:
    """TransformerEngine's set_extra_state unpickles the bytes of its uint8 extra-state tensor."""
    benign = Path(shutil.copytree(_folder("gpt_tp1"), tmp_path / "benign"))
    state = bytearray(pickle.dumps({"scale_fwd": [1.0, 2.0], "amax_history_len": 16}))
    _replace_entry(benign, EXTRA_STATE, _saved([torch.frombuffer(state, dtype=torch.uint8)]))
    scanned = _dcp_entry(cli_json(cli("scan", benign, "--format", "json")))
    plain = _dcp_entry(cli_json(cli("scan", _folder("gpt_tp1"), "--format", "json")))
    assert scanned["verdict"] == "needs-allowlist" and scanned["pickles"] == plain["pickles"] + 1

    hostile = Path(shutil.copytree(_folder("gpt_tp1"), tmp_path / "hostile"))
    payload = bytearray(reduce_pickle("os", "system", shell_touch(marker)))
    _replace_entry(hostile, EXTRA_STATE, _saved([torch.frombuffer(payload, dtype=torch.uint8)]))
    results = _all_commands(cli, hostile, tmp_path / "out.safetensors")
    scanned = _assert_dangerous_and_ran_nothing(results, marker)
    assert any(g["module"] == "os" and g["verdict"] == "dangerous" for g in scanned["globals"])
    assert results["inspect"].exit_code == 0  # the tensor itself is plain data


def _instance(module: str, name: str, fields: dict[str, bytes]) -> bytes:
    state = Op.EMPTY_DICT + Op.MARK + b"".join(text(k) + v for k, v in fields.items()) + Op.SETITEMS
    return global_ref(module, name) + Op.EMPTY_TUPLE + Op.NEWOBJ + state + Op.BUILD


_BASE = {"state_dict_metadata": value({}), "planner_data": value(None), "storage_data": value({})}


def _plans_with_gadget(marker: Path) -> bytes:
    """DCP Metadata whose Megatron save plan holds a WriteItem typed by a posix.system call."""
    gadget = call_global("posix", "system", shell_touch(marker))
    item = _instance("torch.distributed.checkpoint.planner", "WriteItem", {"type": gadget})
    plan = _instance("torch.distributed.checkpoint.planner", "SavePlan", {"items": Op.EMPTY_LIST + item + Op.APPEND})
    plans = Op.EMPTY_LIST + plan + Op.APPEND
    return whole(_instance("torch.distributed.checkpoint.metadata", "Metadata", {**_BASE, "all_local_plans": plans}))


def _mcore_data_with_gadget(marker: Path) -> bytes:
    """Pre-0.14 MCoreMetadata whose mcore_data holds a posix.system call."""
    gadget = call_global("posix", "system", shell_touch(marker))
    mcore_data = Op.EMPTY_DICT + text("w") + Op.EMPTY_DICT + text("x") + gadget + Op.SETITEM + Op.SETITEM
    module = "megatron.core.dist_checkpointing.strategies.torch"
    return whole(_instance(module, "MCoreMetadata", {**_BASE, "mcore_data": mcore_data}))


@pytest.mark.parametrize("build", [_plans_with_gadget, _mcore_data_with_gadget], ids=["save plan", "mcore_data"])
def test_hostile_megatron_metadata_runs_nothing(
    cli: Callable[..., Result], tmp_path: Path, marker: Path, build: Callable[[Path], bytes]
) -> None:
    folder = Path(shutil.copytree(_folder("gpt_tp1"), tmp_path / "hostile"))
    (folder / ".metadata").write_bytes(build(marker))
    results = _all_commands(cli, folder, tmp_path / "out.safetensors")
    scanned = _assert_dangerous_and_ran_nothing(results, marker)
    assert any((g["module"], g["verdict"]) == ("posix", "dangerous") for g in scanned["globals"])
    (line,) = results["inspect"].stderr.splitlines()
    assert results["inspect"].exit_code == 2 and "not torch.distributed.checkpoint metadata" in line


# -- convert -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*LIVE, "nemo2"])
def test_convert_to_safetensors_equals_torch(
    cli: Callable[..., Result], tmp_path: Path, truth: dict[str, dict[str, torch.Tensor]], name: str
) -> None:
    out = tmp_path / "model.safetensors"
    result = cli("convert", _folder(name), out)
    assert result.exit_code == 0, result.stderr
    written = load_file(out)
    assert written.keys() == {k.removeprefix("model.") for k in truth[name] if k.startswith("model.")}
    for key, tensor in written.items():
        assert torch.equal(tensor, truth[name][f"model.{key}"]), key


def test_convert_sharded_and_pth_equal_torch(
    cli: Callable[..., Result], tmp_path: Path, truth: dict[str, dict[str, torch.Tensor]]
) -> None:
    expected = _model(truth["gpt_tp2"])
    sharded = tmp_path / "model.safetensors"
    assert cli("convert", _folder("gpt_tp2"), sharded, "--shard-size", "8KB").exit_code == 0
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    merged = {k: v for shard in shards for k, v in load_file(shard).items()}
    assert merged.keys() == expected.keys() and all(torch.equal(merged[k], expected[k]) for k in expected)
    pth = tmp_path / "model.pth"
    assert cli("convert", _folder("gpt_tp2"), pth, "--to", "pth").exit_code == 0
    loaded = torch.load(pth, weights_only=True)
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)


@pytest.mark.parametrize("unstack", [False, True])
def test_convert_to_plain_dcp_equals_torch(
    cli: Callable[..., Result], tmp_path: Path, truth: dict[str, dict[str, torch.Tensor]], unstack: bool
) -> None:
    out = tmp_path / "plain"
    result = cli("convert", _folder("gpt_tp2"), out, "--to", "dcp", *(["--unstack"] if unstack else []))
    assert result.exit_code == 0, result.stderr
    written = _live_truth(out, tmp_path)  # our own output, read back by torch
    expected = _unstacked_truth(truth["gpt_tp2"]) if unstack else _model(truth["gpt_tp2"])
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)
    refused = cli("convert", _folder("gpt_tp2"), tmp_path / "opt", "--to", "dcp", "--root", "optimizer")
    assert refused.exit_code == 2 and "dp_reshardable" in refused.stderr


def _model(truth: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in truth.items() if k.startswith("model.")}


# -- --unstack -------------------------------------------------------------------------------------


def test_layer_names_split_only_stacked_keys() -> None:
    assert layer_names("decoder.layers.mlp.linear_fc1.weight", (2, 4)) == [
        "decoder.layers.0.mlp.linear_fc1.weight",
        "decoder.layers.1.mlp.linear_fc1.weight",
    ]
    assert layer_names("layers.norm", (1,)) == ["layers.0.norm"]
    assert layer_names("decoder.layers.3.mlp.weight", (2, 4)) is None  # a layer already
    assert layer_names("decoder.layers.mlp.weight", ()) is None
    assert layer_names("decoder.sublayers.mlp.weight", (2,)) is None


def _unstacked_truth(truth: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in truth.items():
        if not key.startswith(prefix):
            continue
        names = layer_names(key.removeprefix(prefix), tuple(tensor.shape))
        out.update({key.removeprefix(prefix): tensor} if names is None else dict(zip(names, tensor, strict=True)))
    return out


@pytest.mark.parametrize("name", LIVE)
def test_unstacked_layers_equal_slices_of_what_torch_loads(
    truth: dict[str, dict[str, torch.Tensor]], name: str
) -> None:
    checkpoint = read_dcp(str(_folder(name)))
    assert unstack_checkpoint(checkpoint) == 12 + 2  # the model's layer tensors, the moments of linear_fc1.weight
    ours = {t.key: load_tensor(t.tensor) for t in all_tensors(checkpoint.root["model"])}
    expected = _unstacked_truth(truth[name])
    assert ours.keys() == expected.keys() and f"{QKV.replace('layers.', 'layers.1.')}" in ours
    for key, tensor in ours.items():
        assert torch.equal(tensor, expected[key]), key


def test_inspect_unstack_names_each_layer_with_its_chunks(cli: Callable[..., Result]) -> None:
    report = cli_json(cli("inspect", _folder("gpt_tp2"), "--unstack", "-v", "--format", "json"))
    rows = {t["key"]: t for t in report["weights"]["tensors"]}
    assert len(rows) == 12 * 2 + 5 and not any(layer_names(k, (1,)) for k in rows)
    qkv = rows["decoder.layers.1.self_attention.linear_qkv.weight"]
    assert qkv["shape"] == [32, 16]
    assert sorted((c["offsets"], c["sizes"]) for c in qkv["chunks"]) == [([0, 0], [16, 16]), ([16, 0], [16, 16])]


@pytest.mark.parametrize("to", ["safetensors", "pth"])
def test_convert_unstack_equals_slices_and_diff_agrees(
    cli: Callable[..., Result], tmp_path: Path, truth: dict[str, dict[str, torch.Tensor]], to: str
) -> None:
    out = tmp_path / f"model.{to}"
    result = cli("convert", _folder("gpt_tp2"), out, "--unstack", "--to", to)
    assert result.exit_code == 0, result.stderr
    written = load_file(out) if to == "safetensors" else torch.load(out, weights_only=True)
    expected = _unstacked_truth(truth["gpt_tp2"])
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    report = cli_json(cli("diff", _folder("gpt_tp2"), out, "--unstack", "--format", "json"))
    assert (report["identical"], report["equal"]) == (True, len(expected))


# -- refusals ------------------------------------------------------------------------------------


def test_dp_reshardable_buffer_is_listed_but_refused_for_conversion(cli: Callable[..., Result], tmp_path: Path) -> None:
    listed = cli_json(cli("inspect", _folder("gpt_tp2"), "--all", "--format", "json"))
    assert DP_BUFFER in {t["key"] for t in listed["tensors"]}
    for args in (("--root", "optimizer"), ("--root", "optimizer", "--to", "pth")):
        result = cli("convert", _folder("gpt_tp2"), tmp_path / "opt.safetensors", *args)
        (line,) = result.stderr.splitlines()
        assert result.exit_code == 2 and "dp_reshardable" in line and DP_BUFFER in line
    assert not list(tmp_path.iterdir())
    moments = cli("convert", _folder("gpt_tp2"), tmp_path / "moments.safetensors", "--root", "optimizer.state")
    assert moments.exit_code == 0, moments.stderr  # the moments keyed by parameter convert


def test_flattened_range_tensor_is_listed_but_refused_for_conversion(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    meta = read_dcp_metadata(str(_folder("pre014_flat")))
    assert meta.mcore and meta.reformulated == {"extra.split": (6, 2)}
    listed = cli_json(cli("inspect", _folder("pre014_flat"), "--all", "--format", "json"))
    assert "extra.split" in {t["key"] for t in listed["tensors"]}
    assert "global shape [6, 2]" in listed["metadata"]["flattened_range extra.split"]
    result = cli("convert", _folder("pre014_flat"), tmp_path / "extra.safetensors", "--root", "extra")
    (line,) = result.stderr.splitlines()
    assert result.exit_code == 2 and "flattened_range" in line and "'extra.split'" in line
    assert cli("convert", _folder("pre014_flat"), tmp_path / "model.safetensors").exit_code == 0


def test_save_plans_prepared_by_the_writer_are_accepted(tmp_path: Path) -> None:
    """A plan whose storage_data the file system writer set (`_StoragePrefix`), as torch pickles it."""
    from dataclasses import replace

    from torch.distributed.checkpoint.filesystem import _StoragePrefix

    folder = Path(shutil.copytree(_folder("gpt_tp2"), tmp_path / "prepared"))
    metadata = pickle.loads((folder / ".metadata").read_bytes())  # our own committed file
    plans = metadata.all_local_plans
    metadata.all_local_plans = [replace(p, storage_data=_StoragePrefix(f"__{i}_")) for i, p in enumerate(plans)]
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    assert read_dcp_metadata(str(folder)).save_plans == 2


def test_damaged_side_files_are_one_line_or_ignored(cli: Callable[..., Result], tmp_path: Path) -> None:
    folder = Path(shutil.copytree(_folder("gpt_tp1"), tmp_path / "damaged"))
    (folder / "metadata.json").write_text("[" * 100_000)  # the save plans still say Megatron-Core
    assert cli_json(cli("inspect", folder, "--format", "json"))["weights"]["root"] == "model"
    common = folder / "common.pt"
    common.write_bytes(common.read_bytes()[:1000])
    for args in (("inspect", folder), ("convert", folder, tmp_path / "out.safetensors")):
        result = cli(*args)
        (line,) = result.stderr.splitlines()
        assert result.exit_code == 2 and "common.pt" in line, line
    scanned = _dcp_entry(cli_json(cli("scan", folder, "--format", "json")))
    assert scanned["verdict"] == "dangerous"  # what cannot be read cannot be cleared
