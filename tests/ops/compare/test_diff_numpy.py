"""numpy values in checkpoints (a Lightning `hyper_parameters` mean, a `best_acc` scalar,
an RNG state): `diff` reports them exactly when numpy says they differ, `inspect` and
`diff` show them as values, and only plain numeric dtypes are ever decoded.

Ground truth: the numpy values themselves, read back with torch.load of the same file
(`np.array_equal`, `.tolist()`); nothing in a checkpoint is run (a marker file stays absent).
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import Result
from support.compare import output_json, save

from ckpttool.checkpoint import GlobalName, OpaqueCall
from ckpttool.npvalues import decode_numpy

Cli = Callable[..., Result]
WEIGHTS = {"w": torch.arange(4.0)}


def checkpoint(tmp_path: Path, name: str, **entries: Any) -> Path:
    return save({"state_dict": WEIGHTS, **entries}, tmp_path / name)


def loaded(path: Path) -> dict[str, Any]:
    """Ground truth: what torch.load gives back (our own test file, so trusted)."""
    value: dict[str, Any] = torch.load(path, weights_only=False)
    return value


def numpy_equal(a: Any, b: Any) -> bool:
    """np.array_equal, through the tuples and dicts that hold arrays (an RNG state)."""
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(numpy_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(numpy_equal(a[k], b[k]) for k in a)
    return bool(np.array_equal(a, b))


def run_diff(cli: Cli, a: Path, b: Path, *options: str) -> tuple[int, dict[str, Any]]:
    result = cli("diff", a, b, "--format", "json", *options)
    assert result.exit_code in (0, 1), result.stderr
    return result.exit_code, output_json(result)


PAIRS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "mean": ({"hyper_parameters": {"mean": np.array([0.485, 0.456, 0.406])}},
             {"hyper_parameters": {"mean": np.array([0.5, 0.5, 0.5])}}),
    "best_acc": ({"best_acc": np.float64(0.9)}, {"best_acc": np.float64(0.8)}),
    "rng": ({"rng": np.random.RandomState(0).get_state()}, {"rng": np.random.RandomState(1).get_state()}),
    "one_element": ({"m": np.array([1, 2, 3], dtype=np.int64)}, {"m": np.array([1, 2, 4], dtype=np.int64)}),
    "float32_scalar": ({"lr": np.float32(0.1)}, {"lr": np.float32(0.2)}),
    "fortran": ({"m": np.asfortranarray(np.arange(6.0).reshape(2, 3))},
                {"m": np.asfortranarray(np.arange(6.0).reshape(2, 3) * 2)}),
}  # fmt: skip
# The keys the --all rows name: a nested leaf, or the tuple element that is the array.
NESTED_KEY = {"mean": "hyper_parameters.mean", "rng": "rng.1"}


@pytest.mark.slow
@pytest.mark.parametrize("every", [False, True], ids=["top-level", "all"])
@pytest.mark.parametrize("case", list(PAIRS))
def test_differing_numpy_entries_are_reported(cli: Cli, tmp_path: Path, case: str, every: bool) -> None:
    a = checkpoint(tmp_path, "a.pth", **PAIRS[case][0])
    b = checkpoint(tmp_path, "b.pth", **PAIRS[case][1])
    top = next(iter(PAIRS[case][0]))
    assert not numpy_equal(loaded(a)[top], loaded(b)[top])  # the truth: numpy says they differ

    code, report = run_diff(cli, a, b, *(["--all"] if every else []))

    assert (code, report["identical"]) == (1, False)
    key = NESTED_KEY.get(case, top) if every else top
    assert [row["key"] for row in report["entries_mismatch"]] == [key]


@pytest.mark.parametrize("every", [False, True], ids=["top-level", "all"])
@pytest.mark.parametrize("case", list(PAIRS))
def test_equal_numpy_entries_saved_twice_are_identical(cli: Cli, tmp_path: Path, case: str, every: bool) -> None:
    a = checkpoint(tmp_path, "a.pth", **PAIRS[case][0])
    b = checkpoint(tmp_path, "b.pth", **PAIRS[case][0])
    top = next(iter(PAIRS[case][0]))
    assert numpy_equal(loaded(a)[top], loaded(b)[top])

    code, report = run_diff(cli, a, b, *(["--all"] if every else []))

    assert (code, report["identical"], report["entries_mismatch"]) == (0, True, [])


@pytest.mark.slow
def test_diff_rows_show_the_decoded_values(cli: Cli, tmp_path: Path) -> None:
    a = checkpoint(tmp_path, "a.pth", **PAIRS["mean"][0], **PAIRS["best_acc"][0])
    b = checkpoint(tmp_path, "b.pth", **PAIRS["mean"][1], **PAIRS["best_acc"][1])
    truth_a, truth_b = loaded(a), loaded(b)

    _, report = run_diff(cli, a, b, "--all")
    rows = {row["key"]: (row["a"], row["b"]) for row in report["entries_mismatch"]}
    assert rows == {
        "hyper_parameters.mean": (
            truth_a["hyper_parameters"]["mean"].tolist(),
            truth_b["hyper_parameters"]["mean"].tolist(),
        ),
        "best_acc": (float(truth_a["best_acc"]), float(truth_b["best_acc"])),
    }

    text = cli("diff", a, b, "--all").stdout
    mean_a, mean_b = truth_a["hyper_parameters"]["mean"].tolist(), truth_b["hyper_parameters"]["mean"].tolist()
    assert f"array([{mean_a[0]!r}, {mean_a[1]!r}, …]) vs array([{mean_b[0]!r}, {mean_b[1]!r}, …])" in text
    assert f"{float(truth_a['best_acc'])!r} vs {float(truth_b['best_acc'])!r}" in text


def test_diff_rows_show_arrays_from_where_they_differ(cli: Cli, tmp_path: Path) -> None:
    values = np.random.RandomState(0).rand(8)
    changed = values.copy()
    changed[7] += 1
    a, b = checkpoint(tmp_path, "a.pth", p=values), checkpoint(tmp_path, "b.pth", p=changed)
    truth_a, truth_b = loaded(a)["p"], loaded(b)["p"]
    first = int(np.flatnonzero(truth_a != truth_b)[0])

    text = cli("diff", a, b).stdout

    assert f"array([…, {truth_a[first].item()!r}]) vs array([…, {truth_b[first].item()!r}])" in text


def entry_lines(output: str) -> dict[str, str]:
    """`entry NAME:   value` lines of inspect's summary, by name."""
    found = {}
    for line in output.splitlines():
        if line.startswith("entry "):
            name, value = line.removeprefix("entry ").split(":", 1)
            found[name] = value.strip()
    return found


def array_text(array: np.ndarray[Any, Any]) -> str:
    elements = ", ".join(repr(float(str(x))) for x in array)
    return f"array([{elements}], dtype={array.dtype.name})"


@pytest.mark.slow
def test_inspect_shows_numpy_values(cli: Cli, tmp_path: Path) -> None:
    path = checkpoint(
        tmp_path,
        "np.pth",
        best_acc=np.float64(0.9),
        hyper_parameters={"mean": np.array([0.485, 0.456, 0.406]), "std": np.array([0.229, 0.224, 0.225], np.float32)},
        image=np.zeros((3, 224, 224), dtype=np.float32),
    )
    truth = loaded(path)
    hp = truth["hyper_parameters"]

    lines = entry_lines(cli("inspect", path).stdout)

    assert lines["best_acc"] == repr(float(truth["best_acc"])) == "0.9"
    assert lines["hyper_parameters"] == f'{{"mean": {array_text(hp["mean"])}, "std": {array_text(hp["std"])}}}'
    image = f"array(float32, shape {list(truth['image'].shape)})"
    assert lines["image"] == image == "array(float32, shape [3, 224, 224])"


VALUES = {
    "float64": np.array([0.485, 0.456, 0.406]),
    "float32": np.array([0.1, 0.2, 1e-30], dtype=np.float32),
    "float16": np.array([0.5, 65504.0], dtype=np.float16),
    "big_endian": np.array([1.5, -2.25], dtype=">f8"),
    "int8": np.array([-128, 127], dtype=np.int8),
    "uint32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "int64_2d_fortran": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
    "bool": np.array([True, False]),
    "empty": np.zeros((0, 3)),
    "scalar_int": np.int64(-7),
    "scalar_bool": np.bool_(True),
    "scalar_float16": np.float16(0.333),
}


@pytest.mark.parametrize("name", list(VALUES))
def test_inspect_json_values_equal_numpys(cli: Cli, tmp_path: Path, name: str) -> None:
    path = checkpoint(tmp_path, "np.pth", value=VALUES[name])
    truth = loaded(path)["value"]

    shown = output_json(cli("inspect", path, "--format", "json"))["entries"]["value"]

    assert np.array_equal(np.array(shown, dtype=truth.dtype).reshape(truth.shape), truth)
    assert np.shape(shown) == np.shape(truth.tolist())  # nested as numpy's own tolist()
    assert type(shown) is type(truth.tolist())  # a scalar as a number of its kind


def test_inspect_json_non_finite_and_large(cli: Cli, tmp_path: Path) -> None:
    path = checkpoint(tmp_path, "np.pth", nan=np.array([np.nan, np.inf, 1.0]), big=np.ones(65, np.uint8))
    truth = loaded(path)

    shown = output_json(cli("inspect", path, "--format", "json"))["entries"]

    assert [float(x) for x in shown["nan"]] == pytest.approx(truth["nan"].tolist(), nan_ok=True)
    assert shown["big"] == {"__class__": "numpy.ndarray", "dtype": "uint8", "shape": list(truth["big"].shape)}


# -- only plain numeric dtypes are decoded; nothing is ever run -----------------------------------


class Payload:
    """Pickles as a call that would create the marker, were anything to run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class Forged:
    """Pickles as `_reconstruct` with a BUILD state of our choosing (dtype, bytes)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, raw: Any) -> None:
        self.state = (1, shape, dtype, False, raw)

    def __reduce__(self) -> tuple[Any, ...]:
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"), self.state)


class ForgedDtype:
    """Pickles as `numpy.dtype(code)` with any BUILD state."""

    def __init__(self, code: str, state: tuple[Any, ...]) -> None:
        self.code, self.state = code, state

    def __reduce__(self) -> tuple[Any, ...]:
        return (np.dtype, (self.code, False, True), self.state)


PLAIN_F8 = (3, "<", None, None, None, -1, -1, 0)
OBJECT_FLAGS = (3, "<", None, None, None, -1, -1, 63)
WITH_FIELDS: tuple[Any, ...] = (3, "<", None, ("a",), {}, -1, -1, 0)
HOSTILE: dict[str, Callable[[Path], Any]] = {
    "object_array": lambda marker: np.array([Payload(marker), 1], dtype=object),
    "structured": lambda marker: np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]),
    "strings": lambda marker: np.array(["a", "bc"]),
    "object_dtype_bytes": lambda marker: Forged((1,), np.dtype("O"), b"\0" * 8),
    "O_code_plain_state": lambda marker: Forged((1,), ForgedDtype("O8", PLAIN_F8), b"\0" * 8),
    "f8_object_flags": lambda marker: Forged((1,), ForgedDtype("f8", OBJECT_FLAGS), b"\0" * 8),
    "f8_with_fields": lambda marker: Forged((1,), ForgedDtype("f8", WITH_FIELDS), b"\0" * 8),
    "too_few_bytes": lambda marker: Forged((3,), np.dtype("<f8"), b"\0" * 23),
    "too_many_bytes": lambda marker: Forged((3,), np.dtype("<f8"), b"\0" * 25),
    "huge_shape": lambda marker: Forged((2**40, 2**40), np.dtype("<f8"), b"\0" * 8),
    "negative_shape": lambda marker: Forged((-1,), np.dtype("<f8"), b""),
    "empty_but_too_large": lambda marker: Forged((0, 2**62, 2**62), np.dtype("<f8"), b""),
    "empty_dimension_too_large": lambda marker: Forged((0, 2**70), np.dtype("<f8"), b""),
    "too_many_dimensions": lambda marker: Forged((0,) * 70, np.dtype("<f8"), b""),
    "elements_as_list": lambda marker: Forged((1,), np.dtype("<f8"), [Payload(marker)]),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HOSTILE))
def test_other_dtypes_and_bad_sizes_stay_inert(cli: Cli, tmp_path: Path, marker: Path, name: str) -> None:
    path = checkpoint(tmp_path, "a.pth", value=HOSTILE[name](marker))
    other = checkpoint(tmp_path, "b.pth", value=np.zeros(1))

    inspected = cli("inspect", path)
    shown = output_json(cli("inspect", path, "--format", "json"))["entries"]["value"]
    code, _ = run_diff(cli, path, other)

    assert inspected.exit_code == 0, inspected.stderr
    assert entry_lines(inspected.stdout)["value"] == "<numpy._core.multiarray._reconstruct(...)>" == shown
    assert code == 1
    assert not marker.exists()


@pytest.mark.slow
def test_hostile_arrays_compare_by_their_whole_structure(cli: Cli, tmp_path: Path, marker: Path) -> None:
    """Arrays left undecoded still differ where their bytes do (and equal where they match)."""
    a = checkpoint(tmp_path, "a.pth", value=Forged((3,), np.dtype("<f8"), b"\0" * 23))
    b = checkpoint(tmp_path, "b.pth", value=Forged((3,), np.dtype("<f8"), b"\1" * 23))
    a2 = checkpoint(tmp_path, "a2.pth", value=Forged((3,), np.dtype("<f8"), b"\0" * 23))
    assert [run_diff(cli, a, b)[0], run_diff(cli, a, a2)[0]] == [1, 0]
    assert [run_diff(cli, a, b, "--all")[0], run_diff(cli, a, a2, "--all")[0]] == [1, 0]
    assert not marker.exists()


def test_legacy_numpy_module_names_decode(tmp_path: Path, cli: Cli) -> None:
    """numpy < 2 pickles `numpy.core.multiarray`; the same bytes under that name decode the same."""
    values = {"mean": np.array([0.485, 0.456, 0.406]), "acc": np.float64(0.9)}
    data = pickle.dumps(values, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert data.count(b"numpy.core.multiarray") == 2
    path = tmp_path / "legacy.pkl"
    path.write_bytes(data)

    shown = output_json(cli("inspect", path, "--format", "json"))["entries"]

    assert shown == {"mean": values["mean"].tolist(), "acc": float(values["acc"])}


def test_decoding_needs_the_ndarray_type(tmp_path: Path) -> None:
    """A subclass or any other first argument is no plain ndarray: left as the call."""
    dtype = OpaqueCall("numpy.dtype", ("f8", False, True), state=PLAIN_F8)
    raw = np.array([1.0]).tobytes()
    plain = OpaqueCall("numpy.core.multiarray._reconstruct", (GlobalName("numpy.ndarray"), (0,), b"b"))
    plain.state = (1, (1,), dtype, False, raw)
    matrix = OpaqueCall("numpy.core.multiarray._reconstruct", (GlobalName("numpy.matrix"), (0,), b"b"))
    matrix.state = plain.state
    decoded = decode_numpy(plain)
    assert decoded is not None and decoded.array.tolist() == [1.0] and not math.isnan(decoded.array[0])
    assert decode_numpy(matrix) is None
