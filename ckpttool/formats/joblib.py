"""joblib files, read as `joblib.load` reads them.

`joblib.dump` pickles each numpy array as a `joblib.numpy_pickle.NumpyArrayWrapper`
(its state: subclass, shape, order, dtype, alignment) and writes the array right after
that object's BUILD, outside the pickle's opcodes: a padding-length byte and padding
when an alignment is recorded, then the raw items; or, for an object array, a whole
pickle of its own (protocol 5), which joblib reads with a plain unpickler. joblib's
unpickler skips those bytes after each BUILD of a wrapper; so does this reading, and
the inner pickles are judged like any other. A compressed joblib file is a zlib, gzip,
bz2, xz or lzma stream of the same bytes (`containers`).

`pickle.loads` reads the same bytes differently (as opcodes); what that reading met
before it failed is kept too, so no gadget hides in what joblib takes for array data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ckpttool.buffers import FileData
from ckpttool.errors import LimitError, PickleError
from ckpttool.pickle import Decoded, Hooks, decode
from ckpttool.pickle.objects import UNSET, Call

WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"
MAX_ITEMS = 1 << 40


def names_the_wrapper(decoded: Decoded | None) -> bool:
    return decoded is not None and any(g.qualname == WRAPPER for g in decoded.globals)


class JoblibReading:
    """One joblib pickle: `decoded` (as joblib reads it) and the object arrays' pickles."""

    def __init__(self, data: FileData, start: int, end: int, source: str) -> None:
        self.data, self.end, self.source = data, end, source
        self.inner: list[Decoded] = []
        self.decoded = decode(data, start=start, end=end, source=source, hooks=Hooks(after_build=self.after_build))

    def after_build(self, target: Any, pos: int) -> int:
        if not (isinstance(target, Call) and target.func_name == WRAPPER):
            return pos
        state = target.state if isinstance(target.state, dict) else {}
        holds_objects, itemsize = _dtype_facts(state.get("dtype"), self.source)
        if holds_objects:
            inner = decode(self.data, start=pos, end=self.end, source=f"{self.source} (object array)")
            self.inner.append(inner)
            return inner.end
        if state.get("numpy_array_alignment_bytes") is not None:
            padding = self.data[self._within(pos + 1) - 1]  # one byte: how many padding bytes follow
            pos = self._within(pos + 1 + padding)
        return self._within(pos + _array_bytes(state.get("shape"), itemsize, self.source))

    def _within(self, pos: int) -> int:
        if pos > self.end:
            raise PickleError("joblib array data runs past the end of the file", path=self.source, offset=self.end)
        return pos


def _dtype_facts(dtype: Any, source: str) -> tuple[bool, int]:
    """(`dtype.hasobject`, `dtype.itemsize`) of the wrapper's dtype, which decide whether
    joblib unpickles the bytes after the wrapper and how many it reads otherwise. numpy
    builds the dtype from its type string, then its BUILD state sets the flags and, for
    void and string types, the item size outright (`f8` with the object flag set holds
    objects, `O8` with it cleared does not): so the dtype is rebuilt by numpy itself from
    the inert record, plain data and nested dtypes only (numpy's C parsing, nothing imported
    or called from the file)."""
    import numpy as np  # only for joblib files

    try:
        built = _numpy_dtype(np, dtype, 0)
    except (TypeError, ValueError, OverflowError, KeyError, IndexError) as exc:
        raise PickleError(f"joblib array wrapper with a dtype numpy does not build: {exc}"[:200], path=source) from None
    return bool(built.hasobject), int(built.itemsize)


_MAX_DTYPE_DEPTH = 32  # structured dtypes nest their fields' dtypes


def _numpy_dtype(np: Any, dtype: Any, depth: int) -> Any:
    if not (isinstance(dtype, Call) and dtype.func_name == "numpy.dtype" and depth < _MAX_DTYPE_DEPTH):
        raise PickleError(f"joblib array wrapper without a readable dtype: {dtype!r}"[:200])
    if not (dtype.kwargs is None and all(type(a) in (str, bool, int) for a in dtype.args)):
        raise PickleError(f"joblib array wrapper with dtype arguments {dtype.args!r}"[:200])
    built = np.dtype(*dtype.args)
    if dtype.state is not UNSET:
        built.__setstate__(_plain(np, dtype.state, depth))
    return built


def _plain(np: Any, value: Any, depth: int) -> Any:
    """A dtype's BUILD state as numpy takes it: plain data, and dtypes rebuilt."""
    if isinstance(value, Call):
        return _numpy_dtype(np, value, depth + 1)
    if type(value) is tuple:
        return tuple(_plain(np, item, depth) for item in value)
    if type(value) is dict:
        return {_plain(np, k, depth): _plain(np, v, depth) for k, v in value.items()}
    if value is None or type(value) in (str, bytes, int, bool, float):
        return value
    raise PickleError(f"joblib dtype state holding {type(value).__name__}")


def _array_bytes(shape: Any, itemsize: int, source: str) -> int:
    if type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape):
        raise PickleError(f"joblib array wrapper with shape {shape!r}"[:200], path=source)
    count = math.prod(shape)
    if count > MAX_ITEMS:
        raise LimitError(f"joblib array of {count} items", path=source)
    return count * itemsize


@dataclass
class JoblibRead:
    """The pickles joblib.load reads (labelled), and why that reading failed, if it did."""

    pickles: list[tuple[str, Decoded]]
    problem: str | None = None

    @property
    def end(self) -> int:
        return self.pickles[0][1].end


def read_as_joblib(data: FileData, start: int, end: int, source: str, plain: Decoded | None) -> JoblibRead | None:
    """joblib's reading of the pickle at `start`, when its plain reading `plain` (complete,
    or up to an error) names the array wrapper; else None."""
    if not names_the_wrapper(plain):
        return None
    try:
        reading = JoblibReading(data, start, end, source)
    except PickleError as exc:
        partial = [(" (as joblib reads it, up to the error)", exc.partial)] if exc.partial else []
        return JoblibRead(partial, f"as joblib reads it: {exc.message}")
    inner = [(f" (object array {i})", decoded) for i, decoded in enumerate(reading.inner)]
    return JoblibRead([(" (as joblib reads it)", reading.decoded), *inner])


def without_problems(decoded: Decoded) -> Decoded:
    """What pickle.loads met before it failed on a joblib file: judged, though its failure
    (array bytes read as opcodes) is no finding."""
    return Decoded(decoded.value, decoded.start, decoded.end, decoded.protocol, decoded.opcodes, decoded.globals,
                   calls=decoded.calls)  # fmt: skip
