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
from support.builders import Op, Raw, ReducesTo, call_global, global_ref, shell_touch, value, whole
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


HANDWRITTEN = {
    "array_bytes_are_opcodes": (array_bytes_that_are_opcodes, _PICKLE_LOAD),
    "opcodes_inside_a_string": (opcodes_inside_a_string, _JOBLIB_LOAD),
}


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
