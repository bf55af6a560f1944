"""numpy scalars and arrays read back from the inert pickle graph, as data.

A pickled `np.float64(0.9)` is the call `numpy.core.multiarray.scalar(dtype, raw)`;
an array is `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` whose BUILD
state is `(1, shape, dtype, is_fortran, raw)`; the dtype is itself the call
`numpy.dtype('f8', False, True)` with the state `(3, '<', None, None, None, -1, -1, 0)`.
Nothing named there is imported or called: where the dtype is a plain number or bool
type (`b1`, `i1`..`i8`, `u1`..`u8`, `f2`/`f4`/`f8`, `c8`/`c16`) with the byte order
recorded, and the bytes are exactly shape x itemsize long, `numpy.frombuffer` reads
them, which is decoding data, nothing more. Everything else (object, structured,
string, datetime dtypes, subclasses, sizes that do not add up) is left as the call.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpttool.checkpoint import GlobalName, OpaqueCall

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "SMALL_ARRAY",
    "ArrayList",
    "NumpyValue",
    "array_summary",
    "array_text",
    "decode_numpy",
    "json_text",
    "numpy_json",
]

_PREFIXES = ("numpy.core.multiarray.", "numpy._core.multiarray.")
_SCALAR = {p + "scalar" for p in _PREFIXES}
_RECONSTRUCT = {p + "_reconstruct" for p in _PREFIXES}
_SIMPLE_DTYPE = re.compile(r"b1|[iu][1248]|f[248]|c(?:8|16)")
SMALL_ARRAY = 64  # arrays up to this many elements are shown in full


@dataclass(frozen=True)
class NumpyValue:
    """A decoded numpy scalar (`scalar`) or array: `array` is a read-only view of the bytes."""

    array: np.ndarray[Any, Any]
    scalar: bool

    @property
    def dtype(self) -> str:
        return str(self.array.dtype.name)

    @property
    def shape(self) -> list[int]:
        return [int(n) for n in self.array.shape]


class ArrayList(list):  # type: ignore[type-arg]
    """A small numpy array's elements as JSON (nested lists): plain lists in JSON output,
    while text output can still say `array([...], dtype=float64)`."""

    dtype: str = ""
    shape: tuple[int, ...] = ()


def decode_numpy(value: object) -> NumpyValue | None:
    """The numpy value `value` pickles, or None where it is no plain numeric one."""
    if not isinstance(value, OpaqueCall) or value.items is not None or value.dictitems is not None:
        return None
    if value.func in _SCALAR:
        return _scalar(value)
    if value.func in _RECONSTRUCT:
        return _array(value)
    return None


def _scalar(call: OpaqueCall) -> NumpyValue | None:
    if call.state is not None or len(call.args) != 2:
        return None
    dtype, raw = _dtype(call.args[0]), call.args[1]
    if dtype is None or not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        return None
    import numpy as np

    return NumpyValue(np.frombuffer(raw, dtype=dtype).reshape(()), scalar=True)


def _array(call: OpaqueCall) -> NumpyValue | None:
    args, state = call.args, call.state
    if len(args) != 3 or args[0] != GlobalName("numpy.ndarray") or not isinstance(state, tuple):
        return None
    if len(state) == 5 and state[0] == 1:  # (version, shape, dtype, is_fortran, raw)
        state = state[1:]
    if len(state) != 4:
        return None
    shape, dtype, fortran, raw = _shape(state[0]), _dtype(state[1]), state[2], state[3]
    if shape is None or dtype is None or type(fortran) is not bool or not isinstance(raw, bytes):
        return None
    if len(raw) != math.prod(shape) * dtype.itemsize:
        return None
    import numpy as np

    array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return NumpyValue(array, scalar=False)


def _shape(value: object) -> tuple[int, ...] | None:
    """A shape numpy can make: at most 32 dimensions (numpy 1's limit) whose nonzero sizes
    multiply to less than 2**62 (numpy refuses even an empty array that would be larger)."""
    if not isinstance(value, tuple) or len(value) > 32 or not all(type(n) is int and n >= 0 for n in value):
        return None
    return value if math.prod(n for n in value if n) < 2**62 else None


def _dtype(value: object) -> np.dtype[Any] | None:
    """`numpy.dtype(code)` for a plain number type with its recorded byte order, else None."""
    if not isinstance(value, OpaqueCall) or value.func != "numpy.dtype" or not value.args:
        return None
    code, state = value.args[0], value.state
    if (
        not isinstance(code, str)
        or not _SIMPLE_DTYPE.fullmatch(code)
        or any(type(a) is not bool for a in value.args[1:])
    ):
        return None
    # (version, byte order, subarray, names, fields, elsize, alignment, flags): no fields, no object flags
    if not isinstance(state, tuple) or state[:1] != (3,) or state[2:] != (None, None, None, -1, -1, 0):
        return None
    order = state[1]
    if order not in (("|",) if code[1:] == "1" else ("<", ">")):
        return None
    import numpy as np

    dtype: np.dtype[Any] = np.dtype(order + code)
    return dtype


# -- shown and written as data -------------------------------------------------------------


def numpy_json(value: NumpyValue) -> bool | int | float | str | ArrayList | dict[str, object]:
    """A scalar as its number; an array of up to `SMALL_ARRAY` elements as an `ArrayList`;
    a larger one as `{"__class__": "numpy.ndarray", "dtype", "shape"}` (no elements)."""
    if value.scalar or value.array.ndim == 0:
        return _element(value.array.reshape(())[()])
    if value.array.size > SMALL_ARRAY:
        return array_summary(value.dtype, value.shape)
    flat = [_element(x) for x in value.array.reshape(-1, order="C")]
    out = ArrayList(_nest(flat, value.shape))
    out.dtype, out.shape = value.dtype, tuple(value.shape)
    return out


def array_summary(dtype: str, shape: list[int]) -> dict[str, object]:
    return {"__class__": "numpy.ndarray", "dtype": dtype, "shape": shape}


def _nest(flat: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) <= 1:
        return flat
    step = math.prod(shape[1:])
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _element(x: Any) -> bool | int | float | str:
    """One element as JSON: bool, int, float (a float32 as its shortest text, 0.485 not
    0.48500001430511475), non-finite floats and complex numbers as text."""
    kind = x.dtype.kind
    if kind == "b":
        return bool(x)
    if kind in "iu":
        return int(x)
    if kind == "c":
        return str(complex(x))
    number = float(str(x))
    return number if math.isfinite(number) else str(number)


def json_text(value: Any) -> str:
    """`value` (JSON data) as `json.dumps` writes it, but arrays as `array([...], dtype=...)`
    and large ones as `array(float64, shape [3, 224, 224])`."""
    if isinstance(value, ArrayList):
        return f"array({_elements_text(value)}, dtype={value.dtype})"
    if _is_summary(value):
        return f"array({value['dtype']}, shape {value['shape']})"
    if isinstance(value, dict) and _holds_array(value):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list) and _holds_array(value):
        return "[" + ", ".join(json_text(v) for v in value) + "]"
    return json.dumps(value, default=str)


def array_text(value: ArrayList, limit: int) -> str | None:
    """A 1-d array in at most `limit` characters: the first elements that fit and `…`
    (`array([0.485, 0.456, …])`), or None where not even one fits."""
    full = json_text(value)
    if len(full) <= limit:
        return full
    if len(value.shape) != 1:
        return None
    items = [_elements_text(x) for x in value]
    for keep in range(len(items) - 1, 0, -1):
        for tail in (f"], dtype={value.dtype})", "])"):
            text = "array([" + ", ".join(items[:keep]) + ", …" + tail
            if len(text) <= limit:
                return text
    return None


def _is_summary(value: object) -> bool:
    return (
        isinstance(value, dict)
        and value.keys() == {"__class__", "dtype", "shape"}
        and (value["__class__"] == "numpy.ndarray")
    )


def _holds_array(value: list[Any] | dict[Any, Any]) -> bool:
    items = value.values() if isinstance(value, dict) else value
    return any(
        isinstance(v, ArrayList) or _is_summary(v) or isinstance(v, (list, dict)) and _holds_array(v) for v in items
    )


def _elements_text(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_elements_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) else repr(value)


def paired_array_text(a: object, b: object, limit: int) -> tuple[str, str] | None:
    """Two 1-d arrays that differ past their first element, each in at most `limit`
    characters from the first element where they differ (`array([…, 0.93, …])`), so that
    the text shown differs too; None where that does not apply or fit."""
    if not (isinstance(a, ArrayList) and isinstance(b, ArrayList) and len(a.shape) == len(b.shape) == 1):
        return None
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    if first == 0 or len(json_text(a)) <= limit and len(json_text(b)) <= limit:
        return None  # the usual text already shows where they differ
    texts = (_from(a, first, limit), _from(b, first, limit))
    return None if texts[0] is None or texts[1] is None else (texts[0], texts[1])


def _from(value: ArrayList, start: int, limit: int) -> str | None:
    items = [_elements_text(x) for x in value][start:]
    for keep in range(len(items), 0, -1):
        text = "array([…, " + ", ".join(items[:keep]) + (", …" if keep < len(items) else "") + "])"
        if len(text) <= limit:
            return text
    return "array([…])" if not items else None  # the shorter one ends before the difference
