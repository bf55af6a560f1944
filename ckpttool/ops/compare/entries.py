"""Whether two top-level entries (epoch, loss, hyper-parameters, ...) hold the same value.

Plain data compares as its JSON would (dict order aside, 1 == 1.0, NaN equals NaN,
a saved 0-dim tensor by the value read from the file), but nothing is compared by how
it is shown: a pickled object or an uninterpreted call (a numpy scalar or array, an
RNG state) compares whole, callable, arguments, BUILD state and added items, bytes
included, so two numpy arrays are equal only with the same dtype, byte order, shape
and bytes.
"""

from __future__ import annotations

from typing import Any

from ckpttool.checkpoint import GlobalName, OpaqueCall, PickledObject, TensorRef
from ckpttool.scalars import read_scalar

_NAN = ("nan",)  # tuples below are tags: data sequences become lists, so they never collide


def same_entry(a: Any, b: Any, read_scalars: bool = True) -> bool:
    return _same(_Canon(read_scalars).form(a), _Canon(read_scalars).form(b), set())


def _same(a: Any, b: Any, compared: set[tuple[int, int]]) -> bool:
    """`a == b` on two canonical forms, each pair of containers compared once: a pickle's memo
    can share one list many times over, and `==` would walk every path (a file of a few
    kilobytes, billions of comparisons, in C code no stop signal interrupts)."""
    if a is b:
        return True
    if type(a) is not type(b) or not isinstance(a, (list, tuple, dict)):
        return bool(a == b)
    if (id(a), id(b)) in compared:
        return True  # a difference anywhere already made the whole answer False
    compared.add((id(a), id(b)))
    if len(a) != len(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(v, b[k], compared) for k, v in a.items())
    return all(_same(x, y, compared) for x, y in zip(a, b, strict=True))


class _Canon:
    """A comparable copy of a value; shared nodes are copied once, cycles end in a tag."""

    def __init__(self, read_scalars: bool) -> None:
        self.read_scalars = read_scalars
        self.done: dict[int, tuple[Any, Any]] = {}
        self.busy: set[int] = set()

    def form(self, value: Any) -> Any:
        if value is None or isinstance(value, (int, str)) and not isinstance(value, bool):
            return value
        key = id(value)
        if key in self.done:
            return self.done[key][1]
        if key in self.busy:
            return ("cycle",)
        self.busy.add(key)
        try:
            result = self._form(value)
        finally:
            self.busy.discard(key)
        self.done[key] = (value, result)  # the value kept alive: its id stays its own
        return result

    def _form(self, value: Any) -> Any:
        if isinstance(value, bool):
            return ("bool", value)
        if isinstance(value, float):
            return _NAN if value != value else value
        if isinstance(value, dict):
            return {str(k): self.form(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.form(v) for v in value]
        if isinstance(value, (bytes, complex, set, frozenset)):
            return (type(value).__name__, value)
        if isinstance(value, TensorRef):
            return self._tensor(value)
        if isinstance(value, (OpaqueCall, PickledObject)):
            name = value.func if isinstance(value, OpaqueCall) else value.cls
            parts = (value.args, value.state, value.items, value.dictitems)
            return (type(value).__name__, name, *(self.form(p) for p in parts))
        if isinstance(value, GlobalName):
            return ("global", value.qualname)
        return (type(value).__name__,)  # cycle markers and other inert leaves

    def _tensor(self, tensor: TensorRef) -> Any:
        if self.read_scalars and tensor.numel == 1:
            scalar = read_scalar(tensor)
            if scalar is not None:
                return self.form(scalar)
        return ("tensor", tensor.dtype, tensor.shape, tensor.device)
