"""`diff` against torch: per tensor, equal exactly when `torch.equal` says so, close exactly
when `torch.allclose` does, with the largest errors torch computes for the same tensors.

Pairs: every committed fixture and the fixture it was derived from (a .pth and its
.safetensors, a whole pickled model and its state_dict, a sharded folder and a single
file, other serializations), every fixture against itself, files `ckpttool convert`
wrote, copies with one value moved, NaN-bearing tensors, and float16/bfloat16 casts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from safetensors.torch import load_file, save_file
from support.compare import (
    elementwise_close,
    output_json,
    perturbed,
    save,
    torch_allclose,
    torch_equal,
    value_errors,
    widened,
)
from support.groundtruth import (
    fixture_path,
    fixture_record,
    ground_truth_weights,
    load_fixture_index,
    torch_load_trusted,
    tutorial_models,
)

import ckpttool.ops.compare.values as valuediff
import ckpttool.tensordata as tensordata
import ckpttool.tensormap as tensormap
from ckpttool.ops.compare import DiffOptions, Tolerance, diff

Cli = Callable[..., Result]
RECORDS = load_fixture_index()
DERIVED = [r for r in RECORDS if r["derived_from"]]
# A raw pickle of plain values has no weights to compare.
WITH_WEIGHTS = [r for r in RECORDS if r["name"] != "raw_pickle_bin"]


def run_diff(cli: Cli, a: Path, b: Path, *options: Any) -> tuple[int, dict[str, Any]]:
    result = cli("diff", a, b, "--format", "json", *options)
    assert result.exit_code in (0, 1), (result.exit_code, result.stderr)
    return result.exit_code, output_json(result)


def by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in rows}


def assert_agrees_with_torch(
    report: dict[str, Any],
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    equal: Callable[[torch.Tensor, torch.Tensor], bool],
    ignore_dtype: bool = False,
) -> None:
    """Keys, shapes, dtypes and per-tensor equality as torch sees the same two state_dicts
    (with `ignore_dtype`, dtype differences are listed but do not count)."""
    assert report["only_in_a"] == [k for k in a if k not in b]
    assert report["only_in_b"] == [k for k in b if k not in a]
    common = [k for k in a if k in b]
    shapes = {k for k in common if a[k].shape != b[k].shape}
    assert set(by_key(report["shape_mismatch"])) == shapes
    same_shape = [k for k in common if k not in shapes]
    dtypes = {k for k in same_shape if a[k].dtype != b[k].dtype}
    assert set(by_key(report["dtype_mismatch"])) == dtypes
    differing = {k for k in same_shape if not equal(a[k], b[k])}
    assert set(by_key(report["value_mismatch"])) == differing
    counted_dtypes = set() if ignore_dtype else dtypes
    assert report["equal"] == len([k for k in same_shape if k not in counted_dtypes and k not in differing])
    expected_identical = not (report["only_in_a"] or report["only_in_b"] or shapes or counted_dtypes or differing)
    assert report["identical"] is (expected_identical and not report["entries_mismatch"])


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||a|| over the elements finite in both, in float64 (complex128)."""
    da, db = widened(a).reshape(-1), widened(b).reshape(-1)
    finite = torch.isfinite(da) & torch.isfinite(db)
    diff, norm = torch.linalg.vector_norm(da[finite] - db[finite]), torch.linalg.vector_norm(da[finite])
    if norm == 0:
        return 0.0 if diff == 0 else math.inf
    return float(diff / norm)


def assert_errors_match(row: dict[str, Any], a: torch.Tensor, b: torch.Tensor, close: torch.Tensor) -> None:
    """Every number of a value-mismatch row, as torch computes it for the same tensors."""
    truth = value_errors(a, b, close)
    assert row["max_abs"] == pytest.approx(truth.max_abs, rel=1e-12, abs=0)
    assert row["max_rel"] == pytest.approx(truth.max_rel, rel=1e-12, abs=0)
    assert row["mismatched"] == truth.mismatched
    assert (row["numel"], row["share"]) == (a.numel(), truth.mismatched / a.numel())
    expected_l2 = relative_l2(a, b)
    if math.isfinite(expected_l2):
        assert row["rel_l2"] == pytest.approx(expected_l2, rel=1e-9, abs=0)
    else:
        assert row["rel_l2"] == "inf"


@pytest.fixture
def cnn_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(tutorial_models().CNN().state_dict())


# -- committed fixtures --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("record", DERIVED, ids=[r["name"] for r in DERIVED])
def test_derived_fixture_pairs_agree_with_torch_equal(cli: Cli, record: dict[str, Any]) -> None:
    """Each fixture against the one it was derived from: other formats, whole models,
    shards, other serializations, other devices. Same values, keys as torch reads them."""
    source = fixture_record(record["derived_from"])
    code, report = run_diff(cli, fixture_path(record), fixture_path(source))
    mine, theirs = ground_truth_weights(record), ground_truth_weights(source)
    assert_agrees_with_torch(report, mine, theirs, torch_equal)
    assert code == (0 if report["identical"] else 1)


@pytest.mark.slow
@pytest.mark.parametrize("record", WITH_WEIGHTS, ids=[r["name"] for r in WITH_WEIGHTS])
def test_every_fixture_equals_itself_as_torch_equal_says(cli: Cli, record: dict[str, Any]) -> None:
    """A file against itself: equal everywhere torch.equal(t, t) holds (NaN never does),
    and everywhere with --equal-nan. Sparse and quantized tensors included."""
    path = fixture_path(record)
    weights = ground_truth_weights(record)
    code, report = run_diff(cli, path, path)
    assert_agrees_with_torch(report, weights, weights, torch_equal)
    assert code == (0 if report["identical"] else 1)
    code, report = run_diff(cli, path, path, "--equal-nan")
    assert (code, report["identical"], report["value_mismatch"]) == (0, True, [])


@pytest.mark.slow
def test_whole_model_against_its_state_dict(cli: Cli) -> None:
    """A pickled nn.Module (its class absent) against the state_dict saved from it."""
    whole, plain = fixture_record("cnn_whole_model_main"), fixture_record("cnn_state_dict")
    code, report = run_diff(cli, fixture_path(whole), fixture_path(plain))
    assert (code, report["identical"]) == (0, True)
    assert report["equal"] == len(ground_truth_weights(plain))


@pytest.mark.slow
def test_sharded_folder_against_single_file(cli: Cli, tmp_path: Path) -> None:
    """Shards written by convert against the file they came from; then one value moved."""
    source = fixture_path(fixture_record("neural_network_state_dict"))
    shards = tmp_path / "shards"
    shards.mkdir()
    assert cli("convert", source, shards / "model.safetensors", "--shard-size", "4KB").exit_code == 0
    assert len(list(shards.glob("*.safetensors"))) > 1
    code, report = run_diff(cli, shards, source)
    assert (code, report["identical"], report["equal"]) == (0, True, 6)

    state = ground_truth_weights(fixture_record("neural_network_state_dict"))
    moved = save(perturbed(state, "linear_relu_stack.2.weight", 5, 0.25), tmp_path / "moved.pth")
    code, report = run_diff(cli, shards, moved)
    assert code == 1
    assert [row["key"] for row in report["value_mismatch"]] == ["linear_relu_stack.2.weight"]


# -- files convert wrote -------------------------------------------------------------------------

CONVERTED = [
    "cnn_state_dict",
    "cnn_whole_model_main",
    "lightning_checkpoint",
    "general_checkpoint_tensor_loss",
    "batchnorm_whole_model",
    "tied_weights_state_dict",
    "legacy_tar_state_dict",
    "nested_containers_whole_model_package",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", CONVERTED)
def test_converted_safetensors_equal_their_source(cli: Cli, tmp_path: Path, name: str) -> None:
    """convert's output against its source: identical; the non-tensor entries of a training
    checkpoint do not count, since a safetensors file holds none."""
    record = fixture_record(name)
    out = tmp_path / "converted.safetensors"
    assert cli("convert", fixture_path(record), out).exit_code == 0
    code, report = run_diff(cli, fixture_path(record), out)
    assert_agrees_with_torch(report, ground_truth_weights(record), load_file(out), torch_equal)
    assert (code, report["identical"], report["entries_mismatch"]) == (0, True, [])


# Files whose tensors safetensors cannot hold (complex128) or lays out differently from
# the source (views, strides, a big-endian byte order), converted to a plain state_dict.
CONVERTED_TO_PTH = ["dtypes", "big_endian_dtypes", "tensor_layouts", "legacy_tar_layouts", "legacy_state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CONVERTED_TO_PTH)
def test_converted_pth_equals_its_source(cli: Cli, tmp_path: Path, name: str) -> None:
    """Contiguous little-endian copies of views, strided and byte-swapped tensors compare
    equal to the originals, as torch.equal says of each pair."""
    record = fixture_record(name)
    out = tmp_path / "converted.pth"
    assert cli("convert", fixture_path(record), out, "--to", "pth").exit_code == 0
    code, report = run_diff(cli, fixture_path(record), out)
    assert_agrees_with_torch(report, ground_truth_weights(record), torch_load_trusted(out), torch_equal)
    assert (code, report["identical"]) == (0, True)


TOLERANCES = [(0.0, 0.0), (0.0, 1e-4), (0.0, 1e-3), (1e-5, 0.0), (1e-3, 0.0), (1e-5, 1e-4)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("atol", "rtol"), TOLERANCES)
def test_cast_copy_against_torch_allclose(cli: Cli, tmp_path: Path, dtype: str, atol: float, rtol: float) -> None:
    """A float16/bfloat16 copy written by `convert --dtype`: every floating key is a dtype
    mismatch, and its values differ exactly where torch.allclose(rtol, atol) fails."""
    record = fixture_record("cnn_state_dict")
    out = tmp_path / f"{dtype}.safetensors"
    assert cli("convert", fixture_path(record), out, "--dtype", dtype).exit_code == 0
    original, cast = ground_truth_weights(record), load_file(out)
    code, report = run_diff(cli, fixture_path(record), out, "--atol", atol, "--rtol", rtol)

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch_allclose(a, b, rtol=rtol, atol=atol)

    assert_agrees_with_torch(report, original, cast, close)
    assert code == 1  # dtypes differ, whatever the tolerance
    for key, row in by_key(report["dtype_mismatch"]).items():
        assert (row["a"], row["b"]) == ("float32", dtype), key
    for key, row in by_key(report["value_mismatch"]).items():
        a, b = original[key], cast[key]
        assert_errors_match(row, a, b, elementwise_close(a, b, rtol=rtol, atol=atol))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("atol", "rtol"), [(0.0, 0.0), (1e-3, 1e-3), (1e-2, 1e-2)])
def test_cast_copy_with_ignore_dtype(cli: Cli, tmp_path: Path, dtype: str, atol: float, rtol: float) -> None:
    """--ignore-dtype: the same cast copy compares by value only; exit 0 exactly when
    torch.allclose holds for every key (on float64 copies), dtypes listed but not counted."""
    record = fixture_record("cnn_state_dict")
    out = tmp_path / f"{dtype}.safetensors"
    assert cli("convert", fixture_path(record), out, "--dtype", dtype).exit_code == 0
    original, cast = ground_truth_weights(record), load_file(out)
    code, report = run_diff(cli, fixture_path(record), out, "--atol", atol, "--rtol", rtol, "--ignore-dtype")

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch_allclose(a, b, rtol=rtol, atol=atol)

    assert_agrees_with_torch(report, original, cast, close, ignore_dtype=True)
    assert report["ignore_dtype"] is True and len(report["dtype_mismatch"]) == len(original)
    assert code == (0 if all(close(original[k], cast[k]) for k in original) else 1)
    for key, row in by_key(report["value_mismatch"]).items():
        a, b = original[key], cast[key]
        assert_errors_match(row, a, b, elementwise_close(a, b, rtol=rtol, atol=atol))


@pytest.mark.slow
def test_readme_bf16_example_passes_with_ignore_dtype(cli: Cli, tmp_path: Path) -> None:
    """The README's `ckpttool diff resnet34.pth r34_bf16.safetensors --atol 1e-2 --rtol 1e-2
    --ignore-dtype`: exit 0, as torch.allclose says of every key; without the flag the
    dtypes alone make it exit 1."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    state = torchvision.models.resnet34().state_dict()
    pth = save(state, tmp_path / "resnet34.pth")
    bf16 = tmp_path / "r34_bf16.safetensors"
    save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()}, bf16)
    cast = load_file(bf16)
    assert all(torch_allclose(state[k], cast[k], rtol=1e-2, atol=1e-2) for k in state)
    code, report = run_diff(cli, pth, bf16, "--atol", 1e-2, "--rtol", 1e-2, "--ignore-dtype")
    assert (code, report["identical"], report["equal"], report["value_mismatch"]) == (0, True, len(state), [])
    code, report = run_diff(cli, pth, bf16, "--atol", 1e-2, "--rtol", 1e-2, "--keys-only")
    assert code == 1 and len(report["dtype_mismatch"]) == sum(v.is_floating_point() for v in state.values())


@pytest.mark.slow
def test_integers_across_dtypes(cli: Cli, tmp_path: Path) -> None:
    """int32 against int64, uint8 against bool: by value with --ignore-dtype, as torch.equal
    says of int64 copies."""
    a = {"i": torch.tensor([1, -2, 3], dtype=torch.int32), "u": torch.tensor([0, 1], dtype=torch.uint8)}
    b = {"i": torch.tensor([1, -2, 4]), "u": torch.tensor([False, True])}
    code, report = run_diff(cli, save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth"), "--ignore-dtype")
    assert_agrees_with_torch(report, a, b, lambda x, y: torch.equal(x.long(), y.long()), ignore_dtype=True)
    assert code == 1 and [row["key"] for row in report["value_mismatch"]] == ["i"]


# -- tensors longer than one block ------------------------------------------------------------------

LONG = 3 * valuediff.READ_ELEMENTS + 5  # three whole blocks and a bit


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_one_block_differs_errors_span_the_whole_tensor(cli: Cli, tmp_path: Path, dtype: torch.dtype) -> None:
    """Values moved in the second block only: equal blocks are skipped by their bytes, yet
    ||a|| (relative L2) and the share count the whole tensor, as torch computes them."""
    generator = torch.Generator().manual_seed(1)
    a = {"w": torch.randn(LONG, generator=generator).to(dtype)}
    b = {"w": a["w"].clone()}
    b["w"][valuediff.READ_ELEMENTS + 7 : valuediff.READ_ELEMENTS + 17] += 1
    assert not torch.equal(a["w"], b["w"])
    code, report = run_diff(cli, save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth"))
    assert_agrees_with_torch(report, a, b, torch_equal)
    (row,) = report["value_mismatch"]
    assert_errors_match(row, a["w"], b["w"], elementwise_close(a["w"], b["w"]))
    assert code == 1


@pytest.mark.slow
def test_without_libc_memcmp_numpy_compares_the_bytes(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no C library's memcmp can be loaded, equal bytes are found by numpy: same answers."""
    monkeypatch.setattr(tensormap, "_memcmp", lambda: None)
    generator = torch.Generator().manual_seed(2)
    a = {"w": torch.randn(LONG, generator=generator), "same": torch.arange(10.0)}
    b = {"w": a["w"].clone(), "same": a["same"].clone()}
    b["w"][-1] += 1
    code, report = run_diff(cli, save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth"))
    assert_agrees_with_torch(report, a, b, torch_equal)
    assert_errors_match(report["value_mismatch"][0], a["w"], b["w"], elementwise_close(a["w"], b["w"]))
    assert code == 1


@pytest.mark.slow
def test_nan_in_a_late_block_of_equal_bytes(cli: Cli, tmp_path: Path) -> None:
    """Bit-identical tensors with one NaN in their last block: different as torch.equal
    says, equal with --equal-nan."""
    values = torch.arange(LONG, dtype=torch.float32)
    values[-2] = float("nan")
    path = save({"w": values}, tmp_path / "nan.pth")
    code, report = run_diff(cli, path, path)
    assert not torch.equal(values, values)
    assert code == 1
    (row,) = report["value_mismatch"]
    assert_errors_match(row, values, values, elementwise_close(values, values))
    assert run_diff(cli, path, path, "--equal-nan")[0] == 0


# -- damaged records ------------------------------------------------------------------------------


def flip_byte(path: Path, key: str, element: int) -> None:
    """Change one byte of the element `element` of the storage `key` views, in place."""
    from ckpttool.formats import read_checkpoint

    tensor = read_checkpoint(str(path)).root[key]
    offset = tensor.storage.record.data_offset() + element * tensor.itemsize
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.slow
@pytest.mark.parametrize("view", ["whole", "slice"], ids=["whole-record", "part-of-record"])
def test_damaged_record_is_an_error_not_a_difference(cli: Cli, tmp_path: Path, view: str) -> None:
    """A record whose bytes changed after saving fails its CRC-32: exit 2 naming it, whether
    the tensor is the whole record or views part of it (the damage outside the view)."""
    base = torch.arange(4096, dtype=torch.float32)
    tensor = base if view == "whole" else base[10:20]
    good = save({"w": tensor}, tmp_path / "good.pth")
    bad = save({"w": tensor}, tmp_path / "bad.pth")
    flip_byte(bad, "w", 3000)
    changed = torch.load(bad, weights_only=True)["w"]  # torch itself does not notice
    assert torch.equal(changed, tensor) is (view == "slice")
    result = cli("diff", good, bad)
    assert (result.exit_code, result.stdout) == (2, "")
    assert "CRC-32" in result.stderr and str(bad) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- one value moved -------------------------------------------------------------------------------

MOVED_KEY, MOVED_INDEX, DELTA = "fc1.weight", 77, 1e-3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("atol", "rtol"),
    [(0.0, 0.0), (2e-3, 0.0), (5e-4, 0.0), (0.0, 1e-9), (0.0, 10.0), (1e-4, 1e-4)],
)
def test_one_perturbed_value(
    cli: Cli, tmp_path: Path, cnn_state: dict[str, torch.Tensor], atol: float, rtol: float
) -> None:
    moved = perturbed(cnn_state, MOVED_KEY, MOVED_INDEX, DELTA)
    a, b = save(cnn_state, tmp_path / "a.pth"), save(moved, tmp_path / "b.pth")
    code, report = run_diff(cli, a, b, "--atol", atol, "--rtol", rtol)

    def close(x: torch.Tensor, y: torch.Tensor) -> bool:
        exact = atol == 0 and rtol == 0
        return torch.equal(x, y) if exact else torch.allclose(x, y, rtol=rtol, atol=atol)

    assert_agrees_with_torch(report, cnn_state, moved, close)
    expected_close = close(cnn_state[MOVED_KEY], moved[MOVED_KEY])
    assert code == (0 if expected_close else 1)
    if not expected_close:
        (row,) = report["value_mismatch"]
        x, y = cnn_state[MOVED_KEY], moved[MOVED_KEY]
        assert_errors_match(row, x, y, elementwise_close(x, y, rtol=rtol, atol=atol))
        assert row["mismatched"] == 1


# -- NaN, signed zero, integers ------------------------------------------------------------------


def nan_state() -> dict[str, torch.Tensor]:
    """NaN in each float kind the bytes are checked for without torch, and a finite tensor."""
    state: dict[str, torch.Tensor] = {}
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        values = torch.linspace(-2, 2, 12, dtype=torch.float32).to(dtype)
        values[[3, 7]] = float("nan")
        state[str(dtype).removeprefix("torch.")] = values.reshape(3, 4)
    state["complex64"] = torch.tensor([1 + 1j, complex(float("nan"), 0.0), 2j], dtype=torch.complex64)
    state["finite"] = torch.arange(6, dtype=torch.float32)
    return state


@pytest.mark.parametrize("equal_nan", [False, True])
@pytest.mark.parametrize(("atol", "rtol"), [(0.0, 0.0), (1e-6, 1e-6)])
def test_nan_bearing_tensors(cli: Cli, tmp_path: Path, equal_nan: bool, atol: float, rtol: float) -> None:
    """NaN at the same places in both files: different as torch.equal/allclose see it,
    equal with --equal-nan. NaN in one file only: different either way."""
    same = nan_state()
    one_sided = {k: v.clone() for k, v in same.items()}
    one_sided["finite"][2] = float("nan")
    one_sided["float32"][0, 0] = float("nan")
    a = save(same, tmp_path / "a.pth")
    flags = ["--atol", atol, "--rtol", rtol] + (["--equal-nan"] if equal_nan else [])

    def close(x: torch.Tensor, y: torch.Tensor) -> bool:
        if atol == 0 and rtol == 0:
            return torch_equal(x, y, equal_nan=equal_nan)
        return bool(torch.isclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan).all())

    for other in (same, one_sided):
        b = save(other, tmp_path / "b.pth")
        code, report = run_diff(cli, a, b, *flags)
        assert_agrees_with_torch(report, same, other, close)
        assert code == (0 if report["identical"] else 1)
        for key, row in by_key(report["value_mismatch"]).items():
            x, y = same[key], other[key]
            closeness = elementwise_close(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan)
            assert row["mismatched"] == int((~closeness).sum()), key


def test_signed_zero_is_equal_as_torch_equal_says(cli: Cli, tmp_path: Path) -> None:
    """0.0 and -0.0 differ in their bits but torch.equal calls them equal."""
    positive = {"w": torch.zeros(4), "h": torch.zeros(3, dtype=torch.float16)}
    negative = {"w": -torch.zeros(4), "h": -torch.zeros(3, dtype=torch.float16)}
    assert all(torch.equal(positive[k], negative[k]) for k in positive)
    code, report = run_diff(cli, save(positive, tmp_path / "a.pth"), save(negative, tmp_path / "b.pth"))
    assert (code, report["identical"], report["equal"]) == (0, True, 2)


@pytest.mark.parametrize(
    ("dtype", "a_values", "b_values"),
    [
        pytest.param(torch.int64, [2**62, 5], [2**62 + 1, 5], id="int64-beyond-float64"),
        pytest.param(torch.uint64, [2**60, 7], [2**60 + 1, 7], id="uint64-beyond-float64"),
        pytest.param(torch.int32, [-3, 4], [-3, 5], id="int32"),
        pytest.param(torch.uint8, [0, 255], [0, 254], id="uint8"),
        pytest.param(torch.bool, [True, False], [True, True], id="bool"),
    ],
)
def test_integer_tensors_exactly_as_torch_equal(
    cli: Cli, tmp_path: Path, dtype: torch.dtype, a_values: list[int], b_values: list[int]
) -> None:
    """Integers that differ by one, also where float64 cannot tell them apart."""
    a, b = {"t": torch.tensor(a_values, dtype=dtype)}, {"t": torch.tensor(b_values, dtype=dtype)}
    assert not torch.equal(a["t"], b["t"])
    code, report = run_diff(cli, save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth"))
    assert_agrees_with_torch(report, a, b, torch_equal)
    assert code == 1
    assert report["value_mismatch"][0]["mismatched"] == 1


# -- non-tensor entries ------------------------------------------------------------------------------


def training_checkpoint(state: Mapping[str, torch.Tensor], epoch: int, lr: float) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "global_step": 10 * epoch,
        "state_dict": dict(state),
        "loss": torch.tensor(1.0 / epoch),  # saved as a 0-dim tensor, as training loops do
        "hyper_parameters": {"lr": lr, "hidden": 16},
    }


def test_differing_entries_are_reported(cli: Cli, tmp_path: Path, cnn_state: dict[str, torch.Tensor]) -> None:
    a = save(training_checkpoint(cnn_state, epoch=3, lr=0.01), tmp_path / "a.ckpt")
    b = save(training_checkpoint(cnn_state, epoch=4, lr=0.02), tmp_path / "b.ckpt")
    code, report = run_diff(cli, a, b)
    assert code == 1
    assert report["value_mismatch"] == [] and report["equal"] == len(cnn_state)
    assert by_key(report["entries_mismatch"]) == {
        "epoch": {"key": "epoch", "a": 3, "b": 4},
        "global_step": {"key": "global_step", "a": 30, "b": 40},
        "loss": {"key": "loss", "a": float(torch.tensor(1 / 3)), "b": 0.25},
        "hyper_parameters": {
            "key": "hyper_parameters",
            "a": {"lr": 0.01, "hidden": 16},
            "b": {"lr": 0.02, "hidden": 16},
        },
    }
    code, report = run_diff(cli, a, a)
    assert (code, report["entries_mismatch"]) == (0, [])


def test_entries_count_only_when_both_files_hold_them(
    cli: Cli, tmp_path: Path, cnn_state: dict[str, torch.Tensor]
) -> None:
    """A training checkpoint still equals its bare weights: a state_dict has no entries."""
    a = save(training_checkpoint(cnn_state, epoch=3, lr=0.01), tmp_path / "a.ckpt")
    b = save(cnn_state, tmp_path / "b.pth")
    code, report = run_diff(cli, a, b)
    assert (code, report["identical"], report["entries_mismatch"]) == (0, True, [])


# -- which tensors: --all, --root-a/--root-b ----------------------------------------------------


def test_all_compares_optimizer_state_too(cli: Cli, tmp_path: Path, cnn_state: dict[str, torch.Tensor]) -> None:
    """Same weights, optimizer moments that differ: equal by default, different with --all."""
    moments = {"exp_avg": torch.ones(3), "exp_avg_sq": torch.ones(3)}
    later = {"exp_avg": torch.ones(3), "exp_avg_sq": torch.full((3,), 2.0)}

    def checkpoint(state: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"model": cnn_state, "optimizer": {"state": {0: state}, "param_groups": [{"lr": 0.1, "params": [0]}]}}

    a = save(checkpoint(moments), tmp_path / "a.pt")
    b = save(checkpoint(later), tmp_path / "b.pt")
    code, report = run_diff(cli, a, b)
    assert (code, report["equal"]) == (0, len(cnn_state))
    code, report = run_diff(cli, a, b, "--all")
    assert code == 1
    (row,) = report["value_mismatch"]
    assert row["key"].endswith("exp_avg_sq") and "optimizer" in row["key"]
    assert (row["max_abs"], row["mismatched"]) == (1.0, 3)


def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of what torch.load returned, by dotted path (empty containers are leaves)."""
    if isinstance(obj, Mapping) and obj:
        for key, value in obj.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)) and obj:
        for index, value in enumerate(obj):
            yield from flatten(value, f"{prefix}.{index}" if prefix else str(index))
    else:
        yield prefix, obj


def adam_checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    """The tutorial's general checkpoint two steps apart, with the learning rate lowered and
    weight decay added in between, as a scheduler and a config change would."""
    torch.manual_seed(0)
    model = tutorial_models().CNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = torch.randn(4, 1, 28, 28)
    paths = []
    for epoch in (1, 2):
        if epoch == 2:
            for group in optimizer.param_groups:
                group["lr"], group["weight_decay"] = 1e-4, 0.01
        optimizer.zero_grad()
        loss = model(batch).square().mean()
        loss.backward()
        optimizer.step()
        checkpoint = {
            "epoch": epoch,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "loss": loss.detach(),
        }
        paths.append(save(checkpoint, tmp_path / f"epoch{epoch}.pt"))
    return paths[0], paths[1]


@pytest.mark.slow
def test_all_compares_hyper_parameters_and_every_tensor_once(cli: Cli, tmp_path: Path) -> None:
    """--all against what torch.load returns for both files: tensors anywhere (optimizer
    moments, step counters, the 0-dim loss) differ exactly where torch.equal says, and
    every non-tensor leaf outside the weights (each param group's lr, weight_decay, betas,
    ...) is an entry exactly where the loaded values differ - each difference once."""
    a, b = adam_checkpoints(tmp_path)
    code, report = run_diff(cli, a, b, "--all")
    leaves_a, leaves_b = (
        dict(flatten(torch.load(a, weights_only=True))),
        dict(flatten(torch.load(b, weights_only=True))),
    )
    tensors_a = {k: v for k, v in leaves_a.items() if isinstance(v, torch.Tensor)}
    tensors_b = {k: v for k, v in leaves_b.items() if isinstance(v, torch.Tensor)}
    assert_agrees_with_torch(report, tensors_a, tensors_b, torch_equal)
    for key, row in by_key(report["value_mismatch"]).items():
        x, y = tensors_a[key], tensors_b[key]
        assert_errors_match(row, x, y, elementwise_close(x, y))

    def entries(leaves: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in leaves.items() if not isinstance(v, torch.Tensor) and not k.startswith("model_")}

    entries_a, entries_b = entries(leaves_a), entries(leaves_b)
    assert set(entries_a) == set(entries_b)
    expected = {k: {"key": k, "a": entries_a[k], "b": entries_b[k]} for k in entries_a if entries_a[k] != entries_b[k]}
    assert by_key(report["entries_mismatch"]) == expected
    group = "optimizer_state_dict.param_groups.0"
    assert set(expected) == {"epoch", f"{group}.lr", f"{group}.weight_decay"}
    assert (expected[f"{group}.lr"]["a"], expected[f"{group}.lr"]["b"]) == (1e-3, 1e-4)
    rows = [row["key"] for row in report["value_mismatch"] + report["entries_mismatch"]]
    assert len(rows) == len(set(rows)) and rows.count("loss") == 1
    assert code == 1


@pytest.mark.slow
def test_without_all_hyper_parameters_are_not_compared(cli: Cli, tmp_path: Path) -> None:
    """By default only the weights and the top-level entries (epoch, loss): the optimizer
    holds tensors, so it is --all's to compare."""
    a, b = adam_checkpoints(tmp_path)
    code, report = run_diff(cli, a, b)
    assert [row["key"] for row in report["entries_mismatch"]] == ["epoch", "loss"]
    assert code == 1


@pytest.mark.slow
def test_roots_pick_the_weights_on_each_side(cli: Cli, tmp_path: Path, cnn_state: dict[str, torch.Tensor]) -> None:
    """An EMA copy inside the same file, compared with the live weights by naming both roots."""
    ema = perturbed(cnn_state, "conv1.bias", 0, 0.5)
    path = save({"state_dict": cnn_state, "state_dict_ema": ema}, tmp_path / "ema.pth")
    code, report = run_diff(cli, path, path, "--root-b", "state_dict_ema")
    assert code == 1
    assert [row["key"] for row in report["value_mismatch"]] == ["conv1.bias"]
    assert report["value_mismatch"][0]["max_abs"] == pytest.approx(0.5, rel=1e-6)
    code, report = run_diff(cli, path, path, "--root-a", "state_dict_ema", "--root-b", "state_dict_ema")
    assert code == 0


# -- --keys-only reads no tensor data ------------------------------------------------------------


def forbid_tensor_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every route from diff to tensor bytes raises."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(tensordata, "read_range", refuse)
    monkeypatch.setattr(tensordata, "chunks", refuse)
    monkeypatch.setattr(tensormap.MappedFiles, "map", refuse)
    monkeypatch.setattr(tensormap, "read_span", refuse)
    monkeypatch.setattr(valuediff, "element_blocks", refuse)
    monkeypatch.setattr(valuediff, "read_span", refuse)


@pytest.mark.slow
def test_keys_only_reads_no_tensor_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cnn_state: dict[str, torch.Tensor]
) -> None:
    moved = perturbed(cnn_state, MOVED_KEY, 0, 1.0)
    moved["extra.weight"] = torch.ones(2)
    moved["conv1.bias"] = moved["conv1.bias"].double()
    moved["fc1.bias"] = torch.zeros(3)
    a, b = save(cnn_state, tmp_path / "a.pth"), save(moved, tmp_path / "b.pth")
    forbid_tensor_reads(monkeypatch)

    report = diff(str(a), str(b), DiffOptions(keys_only=True))
    assert report.keys_only and not report.values_compared
    assert (report.only_in_a, report.only_in_b) == ([], ["extra.weight"])
    assert report.shape_mismatch == [{"key": "fc1.bias", "a": [10], "b": [3]}]
    assert report.dtype_mismatch == [{"key": "conv1.bias", "a": "float32", "b": "float64"}]
    assert report.value_mismatch == []  # the moved value is not looked at
    assert report.equal == len(cnn_state) - 2

    # The same comparison with values does reach the forbidden reads.
    with pytest.raises(AssertionError, match="tensor data was read"):
        diff(str(a), str(b), DiffOptions())


@pytest.mark.slow
def test_keys_only_sees_no_value_differences(cli: Cli, tmp_path: Path, cnn_state: dict[str, torch.Tensor]) -> None:
    moved = perturbed(cnn_state, MOVED_KEY, 0, 1.0)
    a, b = save(cnn_state, tmp_path / "a.pth"), save(moved, tmp_path / "b.pth")
    code, report = run_diff(cli, a, b, "--keys-only")
    assert not torch.equal(cnn_state[MOVED_KEY], moved[MOVED_KEY])
    # keys, shapes and dtypes match, values not compared: exit 0, but not "identical"
    assert (code, report["identical"], report["keys_only"], report["values_compared"]) == (0, None, True, False)
    code, report = run_diff(cli, a, b)
    assert (code, report["identical"], report["keys_only"], report["values_compared"]) == (1, False, False, True)


@pytest.mark.slow
def test_library_tolerance_matches_cli(tmp_path: Path, cnn_state: dict[str, torch.Tensor]) -> None:
    """The library call gives the CLI's facts: one moved value, inside and outside atol."""
    a = save(cnn_state, tmp_path / "a.pth")
    b = save(perturbed(cnn_state, MOVED_KEY, MOVED_INDEX, DELTA), tmp_path / "b.pth")
    assert not diff(str(a), str(b), DiffOptions()).identical
    assert diff(str(a), str(b), DiffOptions(Tolerance(atol=2 * DELTA))).identical


# -- one-element weights are weights, not entries ------------------------------------------------


def scalar_weights(temperature: float, batches: int) -> dict[str, torch.Tensor]:
    """A bare state_dict whose 0-dim tensors are weights: a learned temperature and a
    BatchNorm counter, as `model.state_dict()` holds them."""
    return {
        "proj.weight": torch.eye(3),
        "temperature": torch.tensor(temperature),
        "bn.num_batches_tracked": torch.tensor(batches),
    }


@pytest.mark.slow
def test_one_element_weights_follow_the_tolerance(cli: Cli, tmp_path: Path) -> None:
    """A 0-dim weight within --atol is equal, as torch.allclose says for every tensor."""
    a, b = scalar_weights(1.0, 7), scalar_weights(1.0 + 1e-6, 7)
    assert all(torch.allclose(a[k].double(), b[k].double(), atol=1e-3, rtol=0) for k in a)
    code, report = run_diff(cli, save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth"), "--atol", 1e-3)
    assert_agrees_with_torch(report, a, b, lambda x, y: torch_allclose(x, y, rtol=0, atol=1e-3))
    assert (code, report["identical"], report["entries_mismatch"]) == (0, True, [])


def test_one_element_weights_differ_as_values_once(cli: Cli, tmp_path: Path) -> None:
    """A moved 0-dim weight is one value mismatch, not also a differing entry."""
    a, b = scalar_weights(1.0, 7), scalar_weights(2.0, 8)
    code, report = run_diff(cli, save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth"))
    assert code == 1
    assert {row["key"] for row in report["value_mismatch"]} == {"temperature", "bn.num_batches_tracked"}
    assert report["entries_mismatch"] == []


def test_keys_only_ignores_one_element_weight_values(cli: Cli, tmp_path: Path) -> None:
    a, b = scalar_weights(1.0, 7), scalar_weights(2.0, 8)
    code, report = run_diff(cli, save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth"), "--keys-only")
    assert (code, report["identical"], report["entries_mismatch"]) == (0, None, [])


@pytest.mark.slow
@pytest.mark.parametrize("atol", [1e-3, 2.0])
def test_tolerance_on_integer_complex_and_infinite_values(cli: Cli, tmp_path: Path, atol: float) -> None:
    """torch.allclose semantics beyond real floats: integers, complex numbers, infinities."""
    a = {
        "int": torch.tensor([100, 7]),
        "complex": torch.tensor([1 + 1j, 2j], dtype=torch.complex64),
        "inf": torch.tensor([float("inf"), 1.0]),
    }
    b = {
        "int": torch.tensor([101, 7]),
        "complex": torch.tensor([1 + 1.0001j, 2j], dtype=torch.complex64),
        "inf": torch.tensor([float("inf"), 1.0]),
    }
    code, report = run_diff(cli, save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth"), "--atol", atol)

    def close(x: torch.Tensor, y: torch.Tensor) -> bool:
        return torch.allclose(x, y, rtol=0, atol=atol)

    assert_agrees_with_torch(report, a, b, close)
    assert code == (0 if all(close(a[k], b[k]) for k in a) else 1)


def test_meta_tensors_hold_no_values_to_compare(cli: Cli, tmp_path: Path) -> None:
    """A tensor saved on the meta device has no data in the file (torch.load gives it back on
    meta): two of them agree, one against values is a difference that names the side, and
    the other tensors are compared as usual."""
    meta = save({"w": torch.zeros(3, device="meta"), "b": torch.ones(2)}, tmp_path / "meta.pth")
    real = save({"w": torch.zeros(3), "b": torch.ones(2)}, tmp_path / "real.pth")
    loaded = torch.load(meta, weights_only=True)
    assert loaded["w"].is_meta and not loaded["b"].is_meta

    code, report = run_diff(cli, meta, tmp_path / "meta.pth")
    assert (code, report["identical"], report["equal"]) == (0, True, 2)
    code, report = run_diff(cli, real, meta)
    assert (code, report["equal"]) == (1, 1)
    assert report["value_mismatch"] == [
        {"key": "w", "numel": 3, "no_data": "b", **{k: None for k in valuediff.UNCOMPARABLE}}
    ]
    table = cli("diff", meta, real)
    assert table.exit_code == 1 and "a holds no values (a meta tensor)" in table.stdout
