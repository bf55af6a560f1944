"""joblib files, read as joblib.load reads them: arrays inline after each wrapper's BUILD,
object arrays as pickles of their own, zlib/gzip/bz2/xz/lzma compression. The ground truth
is real `joblib.dump` output and what `joblib.load` returns; the hostile files run their
payload under `joblib.load` or `pickle.loads` in a child process, and nowhere in ckpttool."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.builders import Op, Raw, ReducesTo, call_global, global_ref, proto, shell_touch, value, whole
from support.hostile import assert_dangerous, assert_inspect_harmless, assert_not_run, run_cli

from ckpttool.formats.joblib import WRAPPER, JoblibReading

joblib = pytest.importorskip("joblib")

COMPRESSIONS: dict[str, Any] = {
    "none": 0, "zlib": 3, "gzip": ("gzip", 3), "bz2": ("bz2", 3), "xz": ("xz", 3), "lzma": ("lzma", 3),
}  # fmt: skip
ARRAYS = {
    "floats": np.arange(12.0).reshape(3, 4),
    "ints": np.array([1, -2, 3], dtype="<i4"),
    "fortran": np.asfortranarray(np.ones((2, 3), dtype=np.float32)),
    "text": np.array(["ab", "c"]),
    "empty": np.zeros((0, 5)),
    "scalar": np.array(7.5),
    "records": np.zeros(2, dtype=[("a", "<f4"), ("b", "<i8")]),
}


def objects_array() -> np.ndarray:
    return np.array([1, "x", None], dtype=object)


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_joblib_dump_of_arrays_needs_only_an_allowlist(tmp_path: Path, compression: str) -> None:
    path = tmp_path / "arrays.joblib"
    joblib.dump({**ARRAYS, "objects": objects_array()}, path, compress=COMPRESSIONS[compression])
    loaded = joblib.load(path)
    assert all(np.array_equal(loaded[k], v) for k, v in ARRAYS.items())
    outcome = run_cli("scan", "--format", "json", path)
    (report,) = outcome.json()["files"]
    assert (outcome.exit_code, report["verdict"], report["problems"]) == (0, "needs-allowlist", []), report


def test_the_reading_ends_where_joblib_stops_and_meets_each_array(tmp_path: Path) -> None:
    """Ground truth: joblib.load's result has one array per wrapper, one pickle per object
    array, and the reading ends at the file's last byte, as joblib.load does."""
    path = tmp_path / "arrays.joblib"
    joblib.dump({**ARRAYS, "objects": objects_array(), "more_objects": objects_array()}, path)
    data = path.read_bytes()
    reading = JoblibReading(data, 0, len(data), str(path))
    loaded = joblib.load(path)
    wrappers = [c for c in reading.decoded.calls if c.func_name == WRAPPER]
    assert len(wrappers) == len(loaded)
    assert len(reading.inner) == sum(v.dtype.hasobject for v in loaded.values())
    assert reading.decoded.end == len(data)


# -- hostile joblib files ---------------------------------------------------------------------

_JOBLIB_LOAD = "import joblib, sys\ntry:\n    joblib.load(sys.argv[1])\nexcept Exception:\n    pass\n"
_PICKLE_LOAD = (
    "import pickle, sys\ntry:\n    pickle.loads(open(sys.argv[1], 'rb').read())\nexcept Exception:\n    pass\n"
)


def runs_under(loader: str, path: Path, marker: Path) -> bool:
    subprocess.run([sys.executable, "-c", loader, str(path)], env=dict(os.environ), check=False, timeout=60)
    ran = marker.exists()
    if ran:
        marker.unlink()
    return ran


def wrapper(count: int) -> bytes:
    """A NumpyArrayWrapper of `count` uint8 items, no alignment: `count` bytes follow its BUILD."""
    state = {
        "subclass": Raw(global_ref("numpy", "ndarray")),
        "shape": (count,),
        "order": "C",
        "dtype": Raw(call_global("numpy", "dtype", "u1", False, True)),
        "allow_mmap": False,
        "numpy_array_alignment_bytes": None,
    }
    return global_ref("joblib.numpy_pickle", "NumpyArrayWrapper") + Op.EMPTY_TUPLE + Op.NEWOBJ + value(state) + Op.BUILD


def system_call(marker: Path) -> bytes:
    return call_global("posix", "system", shell_touch(marker))


def array_bytes_that_are_opcodes(marker: Path) -> bytes:
    """The bytes joblib takes for the array are a call for pickle.loads."""
    hidden = Op.POP + system_call(marker)
    return whole(wrapper(len(hidden)) + hidden)


def opcodes_inside_a_string(marker: Path) -> bytes:
    """pickle.loads reads harmless bytes; joblib skips their 5-byte header as the array
    and runs what they hold."""
    hidden = Op.POP + system_call(marker) + Op.STOP
    return whole(wrapper(5) + Op.BINBYTES + struct.pack("<I", len(hidden)) + hidden + Op.POP)


def wrapper_of(dtype: bytes, count: int) -> bytes:
    state = {"subclass": Raw(global_ref("numpy", "ndarray")), "shape": (count,), "order": "C", "dtype": Raw(dtype)}
    return global_ref("joblib.numpy_pickle", "NumpyArrayWrapper") + Op.EMPTY_TUPLE + Op.NEWOBJ + value(state) + Op.BUILD


def dtype_with_state(code: str, state: tuple[Any, ...]) -> bytes:
    """numpy.dtype(code, False, True) and its BUILD state, as numpy pickles a dtype."""
    return call_global("numpy", "dtype", code, False, True) + value(state) + Op.BUILD


def item_size_set_by_the_dtype_state(marker: Path) -> bytes:
    """`V8`, whose BUILD state makes its items 16 bytes: joblib skips 16 bytes and runs the
    call at byte 16; a reading that takes the size from the type string skipped 8 and read
    on through a BINBYTES holding the call, as pickle.loads does."""
    hidden = b"zzz" + Op.SETITEM + system_call(marker) + Op.STOP
    skipped = Op.BINBYTES + struct.pack("<I", 2) + b"ab" + Op.POP  # 8 bytes pickle.loads reads as nothing
    array = skipped + Op.BINBYTES + struct.pack("<I", len(hidden)) + hidden + Op.POP + Op.SETITEM + Op.STOP
    dtype = dtype_with_state("V8", (3, "|", None, None, None, 16, 1, 0))
    return proto(2) + Op.EMPTY_DICT + value("w") + wrapper_of(dtype, 1) + array


def object_flag_set_by_the_dtype_state(marker: Path) -> bytes:
    """`f8` with numpy's object flag set in its BUILD state: joblib unpickles what follows."""
    call = system_call(marker)
    command = shell_touch(marker) + " " * (-len(whole(call)) % 8)  # the pickle fills whole items
    inner = whole(system_call_of(command))
    dtype = dtype_with_state("f8", (3, "<", None, None, None, -1, -1, 1))
    return proto(2) + Op.EMPTY_DICT + value("w") + wrapper_of(dtype, len(inner) // 8) + inner + Op.SETITEM + Op.STOP


def system_call_of(command: str) -> bytes:
    return call_global("posix", "system", command)


HANDWRITTEN = {
    "array_bytes_are_opcodes": (array_bytes_that_are_opcodes, _PICKLE_LOAD),
    "opcodes_inside_a_string": (opcodes_inside_a_string, _JOBLIB_LOAD),
    "item_size_set_by_the_dtype_state": (item_size_set_by_the_dtype_state, _JOBLIB_LOAD),
    "object_flag_set_by_the_dtype_state": (object_flag_set_by_the_dtype_state, _JOBLIB_LOAD),
}


@pytest.mark.parametrize("build", [item_size_set_by_the_dtype_state, object_flag_set_by_the_dtype_state])
def test_the_dtype_state_decides_how_the_array_is_read(tmp_path: Path, marker: Path, build: Any) -> None:
    """The fast half of the handwritten cases above (which also run joblib.load)."""
    path = tmp_path / "state.joblib"
    path.write_bytes(build(marker))
    assert_dangerous(path, "posix.system")
    assert_not_run(marker)


def test_a_structured_array_with_an_object_field_is_read_as_joblib_reads_it(tmp_path: Path) -> None:
    """Its dtype is `V16` with fields: numpy's object flag, in the dtype's state, makes joblib
    pickle its items; the reading follows that pickle instead of taking 16 raw bytes."""
    path = tmp_path / "records.joblib"
    records = np.array([(1, "x"), (2, None)], dtype=[("i", "<i8"), ("o", "O")])
    joblib.dump({"r": records, "after": np.arange(3)}, path)
    report = run_cli("scan", "--format", "json", path).json()["files"][0]
    assert report["problems"] == [], report["problems"]
    assert any("object array" in name for name in _pickle_names(path))


def _pickle_names(path: Path) -> list[str]:
    from ckpttool.formats import find_pickles

    return [name for name, _ in find_pickles(str(path)).pickles]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HANDWRITTEN))
def test_a_payload_hidden_between_the_readings_is_found(tmp_path: Path, marker: Path, name: str) -> None:
    build, loader = HANDWRITTEN[name]
    path = tmp_path / f"{name}.joblib"
    path.write_bytes(build(marker))
    assert runs_under(loader, path, marker)
    assert_dangerous(path, "posix.system")
    assert run_cli("check", path).exit_code == 1
    assert_inspect_harmless(path)
    assert_not_run(marker)


@pytest.mark.slow
@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
@pytest.mark.parametrize("where", ["value", "object_array"])
def test_joblib_dump_of_a_payload_is_dangerous(tmp_path: Path, marker: Path, compression: str, where: str) -> None:
    payload = ReducesTo(os.system, shell_touch(marker))
    obj = payload if where == "value" else {"w": np.arange(3.0), "o": np.array([payload, 1], dtype=object)}
    path = tmp_path / "payload.joblib"
    joblib.dump(obj, path, compress=COMPRESSIONS[compression])
    assert runs_under(_JOBLIB_LOAD, path, marker)
    assert_dangerous(path, "posix.system")
    assert_inspect_harmless(path)
    assert_not_run(marker)
