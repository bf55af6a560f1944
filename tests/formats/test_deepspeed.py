"""DeepSpeed ZeRO checkpoints, read without DeepSpeed: what ckpttool consolidates equals
what the engine itself held.

The run folders under fixtures/deepspeed/ were written by DeepSpeed on the CPU
accelerator (`fixtures/deepspeed_generate.py`, which CI cannot run: no DeepSpeed here).
Beside each one, the engine's own values, saved by the same run: `engine.safetensors`
(`engine.module.state_dict()`, ZeRO-3 inside `GatheredParameters`), `master.safetensors`
(each parameter's fp32 master, `safe_get_full_fp32_param`), `moments.safetensors` (Adam's
`exp_avg`/`exp_avg_sq`, `safe_get_full_optimizer_state`) and, where it worked,
`zero_to_fp32.safetensors` (DeepSpeed's own consolidation); `cases.json` records each case.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from support.cli import cli_json

from ckpttool.checkpoint import TensorRef
from ckpttool.formats import read_checkpoint
from ckpttool.formats.registry import detect
from ckpttool.formats.torchzip import read_torch_zip
from ckpttool.tensordata import load_tensor
from ckpttool.weights import find_weights

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "deepspeed"
GENERATOR = FIXTURES.parent / "deepspeed_generate.py"
CASES: dict[str, dict[str, Any]] = json.loads((FIXTURES / "cases.json").read_text())
TAG = "global_step2"
BUFFERS = {"scale", "counts", "running", "seen"}  # the fixtures' model's persistent buffers


def _weights(run: Path) -> dict[str, TensorRef]:
    return find_weights(read_checkpoint(str(run)).root).mapping()


def _trainable(case: str) -> set[str]:
    return set(load_file(FIXTURES / case / "master.safetensors"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_are_the_engines(case: str) -> None:
    """Every entry of the engine's state_dict, by name: a trainable parameter is its fp32
    master exactly (and, cast to the model's dtype, the engine's parameter); frozen
    parameters and buffers are the engine's own, dtype included."""
    engine = load_file(FIXTURES / case / "engine.safetensors")
    master = load_file(FIXTURES / case / "master.safetensors")
    checkpoint = read_checkpoint(str(FIXTURES / case))
    ties = checkpoint.root["shared_params"] or {}  # None without ZeRO
    weights = find_weights(checkpoint.root).mapping()
    assert set(weights) == set(engine)
    for name, expected in engine.items():
        got = load_tensor(weights[name])
        source = ties.get(name, name)  # a tied parameter's master is its source's
        if source in master:
            assert got.dtype == torch.float32 and torch.equal(got, master[source]), name
            assert torch.equal(got.to(expected.dtype), expected), name
        else:
            assert got.dtype == expected.dtype and torch.equal(got, expected), name
    assert "scratch" not in weights  # the non-persistent buffer was never saved
    tied, source = weights["out.weight"], weights["embed.weight"]  # tied, as the model ties them: one tensor,
    # or (no ZeRO: the module's own state_dict) two views of one storage, as torch.save keeps them
    assert tied is source or (tied.storage, tied.offset, tied.stride) == (source.storage, source.offset, source.stride)


@pytest.mark.parametrize("case", sorted(c for c in CASES if CASES[c]["zero_to_fp32"]["works"]))
def test_equals_zero_to_fp32_where_it_works(case: str) -> None:
    """DeepSpeed's script casts buffers to float32 and, for ZeRO-1, drops frozen parameters;
    every tensor it does return holds the values ckpttool reads."""
    theirs = load_file(FIXTURES / case / "zero_to_fp32.safetensors")
    weights = _weights(FIXTURES / case)
    for name, expected in theirs.items():
        got = load_tensor(weights[name])
        assert torch.equal(got.to(expected.dtype), expected), name
    assert _trainable(case) <= set(theirs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_moments_by_parameter_name(case: str) -> None:
    """By name; without ZeRO the file keeps torch's own optimizer state_dict, by the index
    each parameter has in the generator's parameter groups (the file names none)."""
    moments = load_file(FIXTURES / case / "moments.safetensors")
    state = read_checkpoint(str(FIXTURES / case)).root["optimizer"]["state"]
    index = _optimizer_indices(CASES[case]["groups"]) if CASES[case]["stage"] == 0 else {}
    for key, expected in moments.items():
        name, moment = key.rsplit("/", 1)
        got = load_tensor(state[index.get(name, name)][moment])
        assert got.shape == expected.shape and torch.equal(got, expected.to(got.dtype)), key


def _optimizer_indices(groups: int) -> dict[str, int]:
    """Each trainable parameter's index in the optimizer the generator builds."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("deepspeed_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    model = generator.Tiny()
    names = {id(p): n for n, p in model.named_parameters()}
    ordered = [p for group in generator.param_groups(model, groups) for p in group["params"]]
    return {names[id(p)]: i for i, p in enumerate(ordered)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_tag_and_latest_are_one_checkpoint(case: str) -> None:
    run = FIXTURES / case
    paths = [run, run / TAG, run / "latest"]
    assert {detect(str(p)) for p in paths} == {"deepspeed"}
    reference = {k: load_tensor(v) for k, v in _weights(run).items()}
    for path in paths[1:]:
        for name, tensor in _weights(path).items():
            assert torch.equal(load_tensor(tensor), reference[name]), (path, name)


@pytest.mark.slow
def test_inspect_shows_the_run(cli: Any) -> None:
    case = "zero3_bf16_3ranks"
    report = cli_json(cli("inspect", FIXTURES / case, "--format", "json"))
    assert report["format"] == "deepspeed"
    summary = report["entries"]["deepspeed"]
    assert (summary["zero_stage"], summary["world_size"], summary["precision"]) == (3, 3, "bf16")
    assert report["entries"]["ds_version"] == CASES[case]["ds_version"]
    assert report["metadata"]["zero_stage"] == "3"
    engine = load_file(FIXTURES / case / "engine.safetensors")
    weights = report["weights"]
    assert (weights["root"], weights["roles"]) == ("module", "file")
    roles = {row["key"]: row["role"] for row in weights["tensors"]}
    assert roles == {k: "buffer" if k in BUFFERS else "parameter" for k in engine}
    every = {row["key"] for row in report["tensors"]}
    moments = load_file(FIXTURES / case / "moments.safetensors")
    assert {f"optimizer.state.{key.replace('/', '.')}" for key in moments} <= every  # --all: moments by name


# -- refusals ----------------------------------------------------------------------------------------


def _copy(case: str, tmp_path: Path) -> Path:
    run = tmp_path / case
    shutil.copytree(FIXTURES / case, run)
    return run


def _refused(cli: Any, path: Path, words: str) -> None:
    result = cli("inspect", path)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and words in lines[0], lines


def test_missing_rank_is_refused(cli: Any, tmp_path: Path) -> None:
    run = _copy("zero3_fp32_2ranks", tmp_path)
    (run / TAG / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    _refused(cli, run, "rank(s) 0 are missing")


def test_missing_model_states_are_refused(cli: Any, tmp_path: Path) -> None:
    run = _copy("zero2_fp32_2ranks", tmp_path)
    (run / TAG / "mp_rank_00_model_states.pt").unlink()
    _refused(cli, run, "no mp_rank_00_model_states.pt")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("zero_pp_rank_0_mp_rank_01_optim_states.pt", "tensor or pipeline parallel"),
        ("layer_01-model_00-model_states.pt", "pipeline-parallel"),
        ("expp_rank_0_mp_rank_00_optim_states.pt", "MoE expert"),
    ],
)
def test_other_parallelism_is_refused(cli: Any, tmp_path: Path, name: str, words: str) -> None:
    run = _copy("zero1_fp32_2ranks", tmp_path)
    shutil.copy(run / TAG / "mp_rank_00_model_states.pt", run / TAG / name)
    _refused(cli, run, words)
    # A layout the reader refuses is no finding of scan: every rank file is still judged.
    scanned = cli("scan", run, "--format", "json")
    entry = _deepspeed_entry(cli_json(scanned))
    assert (scanned.exit_code, entry["verdict"]) == (0, "needs-allowlist"), entry
    assert any(words in note for note in entry["notes"]), entry["notes"]
    assert entry["pickles"] == len(list((run / TAG).glob("*.pt")))


def test_partition_count_not_the_files_found_is_refused(cli: Any, tmp_path: Path) -> None:
    run = _copy("zero1_fp32_2ranks", tmp_path)
    tag = run / TAG
    shutil.copy(tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt", tag / "zero_pp_rank_2_mp_rank_00_optim_states.pt")
    _refused(cli, run, "partition_count")


@pytest.mark.parametrize(
    ("case", "model", "shape"),
    [
        ("zero2_fp32_2ranks", "mp_rank_00_model_states.pt", [1000, 1000]),  # more than the partitions hold
        ("zero3_fp32_2ranks", "zero_pp_rank_0_mp_rank_00_model_states.pt", [2]),  # less than they hold
    ],
)
def test_sizes_that_do_not_add_up_are_refused(
    cli: Any, tmp_path: Path, case: str, model: str, shape: list[int]
) -> None:
    run = _copy(case, tmp_path)
    path = run / TAG / model
    states = torch.load(path, weights_only=False)  # our own fixture, written by DeepSpeed
    first = states["param_shapes"][0]
    first[next(iter(first))] = torch.Size(shape)
    torch.save(states, path)
    _refused(cli, run, "sizes do not add up")


# -- convert -----------------------------------------------------------------------------------------


def _consolidated(case: str) -> dict[str, torch.Tensor]:
    return {k: load_tensor(v) for k, v in _weights(FIXTURES / case).items()}


@pytest.mark.parametrize("case", ["zero2_bf16_3ranks", "zero3_fp32_2ranks"])
def test_convert_to_safetensors_is_the_consolidated_weights(cli: Any, tmp_path: Path, case: str) -> None:
    out = tmp_path / "model.safetensors"
    result = cli("convert", FIXTURES / case, out)
    assert result.exit_code == 0, result.stderr
    written = load_file(out)
    expected = _consolidated(case)
    assert set(written) == set(expected)
    for name, value in expected.items():
        assert written[name].dtype == value.dtype and torch.equal(written[name], value), name
    master = load_file(FIXTURES / case / "master.safetensors")
    assert all(torch.equal(written[n], v) for n, v in master.items())


@pytest.mark.slow
def test_convert_shards_to_pth_and_casts(cli: Any, tmp_path: Path) -> None:
    case = "zero3_bf16_3ranks"
    expected = _consolidated(case)
    result = cli("convert", FIXTURES / case, tmp_path / "out" / "model.safetensors", "--shard-size", "600B")
    assert result.exit_code == 0, result.stderr
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = {name: load_file(tmp_path / "out" / name) for name in set(index["weight_map"].values())}
    assert len(shards) > 1 and set(index["weight_map"]) == set(expected)
    for name, shard in index["weight_map"].items():
        assert torch.equal(shards[shard][name], expected[name]), name
    result = cli("convert", FIXTURES / case, tmp_path / "model.pth", "--to", "pth", "--dtype", "bf16", "--dedupe")
    assert result.exit_code == 0, result.stderr
    loaded = torch.load(tmp_path / "model.pth", weights_only=True)
    for name, value in expected.items():
        want = value.to(torch.bfloat16) if value.is_floating_point() else value
        assert loaded[name].dtype == want.dtype and torch.equal(loaded[name], want), name
    assert loaded["out.weight"].data_ptr() == loaded["embed.weight"].data_ptr()  # the tie survives in a .pth


@pytest.mark.slow
def test_convert_to_dcp(cli: Any, tmp_path: Path) -> None:
    case = "zero1_fp32_2ranks"
    result = cli("convert", FIXTURES / case, tmp_path / "dcp", "--to", "dcp")
    assert result.exit_code == 0, result.stderr
    back = _weights(tmp_path / "dcp")
    for name, value in _consolidated(case).items():
        assert torch.equal(load_tensor(back[name]), value), name


# -- the benchmark's folders -------------------------------------------------------------------------


def _zero3_writer() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        import zero3_layout
    finally:
        sys.path.pop(0)
    return zero3_layout


def _flats(path: Path) -> torch.Tensor:
    state = read_torch_zip(str(path)).root["optimizer_state_dict"]
    return torch.cat([load_tensor(t) for t in state["fp32_flat_groups"]])


def _real(writer: Any, params: list[tuple[str, torch.Size]], rank: int) -> torch.Tensor:
    """Which elements of a rank's flat partition hold parameters (not padding)."""
    shares = list(writer.shares(params, 2))
    mask = torch.zeros(sum(share for _, _, share in shares), dtype=torch.bool)
    offset = 0
    for _, numel, share in shares:
        mask[offset : offset + max(0, min(share, numel - rank * share))] = True
        offset += share
    return mask


@pytest.mark.slow
def test_benchmark_layout_is_deepspeeds(tmp_path: Path) -> None:
    """The benchmark writes its ZeRO-3 folders with torch.save: given the parameters of a
    folder DeepSpeed wrote, it writes the same files, keys and partition bytes."""
    writer = _zero3_writer()
    case = FIXTURES / "zero3_fp32_2ranks"
    master = load_file(case / "master.safetensors")
    theirs = {n: read_torch_zip(str(p)).root for n, p in ((p.name, p) for p in (case / TAG).iterdir())}
    model = theirs["zero_pp_rank_0_mp_rank_00_model_states.pt"]
    params = [(n, torch.Size(s)) for group in model["param_shapes"] for n, s in group.items()]
    buffers = {n: load_tensor(model["module"][n]) for n in model["buffer_names"] if n in model["module"]}
    run = tmp_path / "run"
    writer.write_zero3(str(run), params, 2, lambda n: master[n].reshape(-1), buffers)
    ours = {p.name: read_torch_zip(str(p)).root for p in (run / TAG).iterdir()}
    assert set(ours) == set(theirs)
    for name, root in ours.items():
        assert set(root) == set(theirs[name]), name
        if "optimizer_state_dict" in root:
            assert set(root["optimizer_state_dict"]) == set(theirs[name]["optimizer_state_dict"])
            real = _real(writer, params, int(name.split("_")[3]))  # the padding holds what Adam left there
            assert torch.equal(_flats(run / TAG / name)[real], _flats(case / TAG / name)[real]), name
    weights = _weights(run)
    for name, value in master.items():
        assert torch.equal(load_tensor(weights[name]), value), name


# -- scan --------------------------------------------------------------------------------------------


def test_scan_reads_every_rank_file_and_names_the_script(cli: Any, tmp_path: Path) -> None:
    """DeepSpeed's four classes are state holders and an int enum: needs-allowlist, no
    unknown call; the consolidation script DeepSpeed copies beside the run is named as code
    (a stand-in here: the fixtures do not ship DeepSpeed's)."""
    run = _copy("zero2_bf16_3ranks", tmp_path)
    marker = tmp_path / "ran"
    (run / "zero_to_fp32.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    result = cli("scan", run, "--format", "json")
    report = cli_json(result)
    document = _deepspeed_entry(report)
    assert all(f["verdict"] in ("safe", "needs-allowlist") for f in report["files"]), report["files"]
    verdicts = {g["module"] + "." + g["name"]: g["verdict"] for g in document["globals"]}
    assert verdicts["deepspeed.runtime.zero.config.ZeroStageEnum"] == "needs-allowlist"
    assert verdicts["deepspeed.runtime.fp16.loss_scaler.LossScaler"] == "needs-allowlist"
    assert verdicts["deepspeed.utils.tensor_fragment.fragment_address"] == "needs-allowlist"
    assert document["verdict"] == "needs-allowlist" and result.exit_code == 0  # 1 only with --strict
    assert document["pickles"] == 4  # the model states and 3 optimizer state files
    assert any("zero_to_fp32.py" in note and "never runs it" in note for note in document["notes"])
    assert not marker.exists()


# -- diff and check ------------------------------------------------------------------------------------


def test_diff_against_the_engines_state_dict(cli: Any) -> None:
    """fp32: the consolidated weights are the engine's, tensor for tensor."""
    case = FIXTURES / "zero3_fp32_2ranks"
    report = cli_json(cli("diff", case, case / "engine.safetensors", "--format", "json"))
    assert report["identical"] is True, report


@pytest.mark.slow
def test_check_against_the_model(cli: Any) -> None:
    generator = Path(__file__).resolve().parents[2] / "fixtures" / "deepspeed_generate.py"
    result = cli("check", FIXTURES / "zero2_fp32_2ranks", "--model", f"{generator}:Tiny", "--format", "json")
    assert result.exit_code == 0, result.output
    document = cli_json(result)["files"][0]
    assert document["ok"] and not [f for f in document["findings"] if f["severity"] == "error"], document


@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_only_is_what_torch_load_does(cli: Any, case: str) -> None:
    """DeepSpeed torch.loads every rank file: the generator recorded whether
    torch.load(weights_only=True) loads them all once DeepSpeed's classes are allowlisted;
    where they load without any (no DeepSpeed class in them: no ZeRO), no allowlist is asked."""
    document = _deepspeed_entry(cli_json(cli("scan", FIXTURES / case, "--format", "json")))
    loads = CASES[case]["weights_only_with_allowlist"]
    expected = "loads" if _load_as_they_are(FIXTURES / case) else "loads-after-allowlist" if loads else "refused"
    assert document["weights_only"]["result"] == expected


def _load_as_they_are(run: Path) -> bool:
    """torch.load(weights_only=True) of every rank file, with nothing allowlisted."""
    try:
        for path in (run / TAG).glob("*.pt"):
            torch.load(path, weights_only=True)
    except Exception:
        return False
    return True


def _deepspeed_entry(report: dict[str, Any]) -> dict[str, Any]:
    """A folder scan has an entry per file; the run's own entry is the DeepSpeed checkpoint."""
    (entry,) = [f for f in report["files"] if f["format"] == "deepspeed"]
    return entry


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_a_hostile_rank_file_runs_nothing(cli: Any, tmp_path: Path) -> None:
    """An optimizer state file that would open a file when unpickled: read inertly, refused
    as no ZeRO state by every command, dangerous to scan; the payload never runs."""
    run = _copy("zero1_fp32_2ranks", tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"optimizer_state_dict": _Payload(marker)}, run / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    _refused(cli, run, "optimizer_state_dict")
    assert cli("convert", run, tmp_path / "out.safetensors").exit_code == 2
    document = _deepspeed_entry(cli_json(cli("scan", run, "--format", "json")))
    assert document["verdict"] == "dangerous"
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_optimizer_shows_state_by_name(cli: Any) -> None:
    case = "zero3_bf16_3ranks"
    report = cli_json(cli("optimizer", FIXTURES / case, "--format", "json"))
    (optimizer,) = report["optimizers"]
    assert (optimizer["type"], optimizer["names"]) == ("Adam", "keys")
    master = load_file(FIXTURES / case / "master.safetensors")
    assert [p for g in optimizer["param_groups"] for p in g["params"]] == [s["name"] for s in optimizer["state"]]
    for state in optimizer["state"]:
        shape = list(master[state["name"]].shape)
        assert state["step"] == 2 and {k: v["shape"] for k, v in state["tensors"].items()} == {
            "exp_avg": shape,
            "exp_avg_sq": shape,
        }
    assert {s["name"] for s in optimizer["state"]} == set(master)


def test_convert_refuses_a_damaged_partition(cli: Any, tmp_path: Path) -> None:
    """Slices are copied file to file; the partition's CRC-32 is still checked before
    anything lands."""
    run = _copy("zero3_fp32_2ranks", tmp_path)
    path = run / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    flat = read_torch_zip(str(path)).root["optimizer_state_dict"]["fp32_flat_groups"][0]
    assert flat.storage is not None and flat.storage.record is not None
    data = bytearray(path.read_bytes())
    data[flat.storage.record.data_offset() + 4 * flat.offset + 1] ^= 0xFF
    path.write_bytes(bytes(data))
    out = tmp_path / "model.safetensors"
    result = cli("convert", run, out)
    assert result.exit_code == 2 and "CRC-32" in result.stderr, result.output
    assert not out.exists()


def test_convert_to_pth_without_a_cast(cli: Any, tmp_path: Path) -> None:
    case = "zero3_fp32_2ranks"
    result = cli("convert", FIXTURES / case, tmp_path / "model.pth", "--to", "pth")
    assert result.exit_code == 0, result.stderr
    loaded = torch.load(tmp_path / "model.pth", weights_only=True)
    expected = _consolidated(case)
    assert set(loaded) == set(expected)
    assert all(loaded[k].dtype == v.dtype and torch.equal(loaded[k], v) for k, v in expected.items())


def test_where_zero_to_fp32_goes_wrong_ckpttool_does_not() -> None:
    """As DeepSpeed 0.19.8's consolidation ran in the generator: ZeRO-1 frozen parameters
    dropped, BF16_Optimizer refused; ckpttool reads both whole."""
    frozen = {"frozen.weight", "frozen.bias"}
    theirs = load_file(FIXTURES / "zero1_fp32_2ranks" / "zero_to_fp32.safetensors")
    assert not frozen & set(theirs) and frozen <= set(_weights(FIXTURES / "zero1_fp32_2ranks"))
    record = CASES["bf16opt_2ranks"]["zero_to_fp32"]
    assert not record["works"] and "is not a zero checkpoint" in record["error"]
    engine = load_file(FIXTURES / "bf16opt_2ranks" / "engine.safetensors")
    assert set(_weights(FIXTURES / "bf16opt_2ranks")) == set(engine)
