"""Whether two checkpoint object trees mean the same thing.

Used to prove a rewritten file decodes to what its source held. The walk is
iterative and compares each pair of nodes once, so shared references and cycles
cost nothing extra. Floats compare NaN-equal; storages compare by key, dtype, size
and (through `location`) device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ckpttool.checkpoint import GlobalName, OpaqueCall, PickledObject, Storage, TensorRef
from ckpttool.interpret import StateDict

_CONTAINERS = (dict, list, tuple, PickledObject, TensorRef, OpaqueCall)


def equivalent(a: Any, b: Any, location: Callable[[str], str] = lambda loc: loc) -> bool:
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Any, Any]] = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, _CONTAINERS):
            pair = (id(x), id(y))
            if pair in seen:
                continue
            seen.add(pair)
        children = _children_if_same(x, y, location)
        if children is None:
            return False
        stack.extend(children)
    return True


def _children_if_same(x: Any, y: Any, location: Callable[[str], str]) -> list[tuple[Any, Any]] | None:
    """The pairs still to compare, or None when x and y already differ."""
    if isinstance(x, float):
        return [] if x == y or (x != x and y != y) else None
    if isinstance(x, dict):
        if len(x) != len(y):
            return None
        pairs = [*zip(x.keys(), y.keys(), strict=True), *zip(x.values(), y.values(), strict=True)]
        if isinstance(x, StateDict):  # the module versions load_state_dict reads
            pairs.append((x.metadata, y.metadata))
        return pairs
    if isinstance(x, (list, tuple)):
        return list(zip(x, y, strict=True)) if len(x) == len(y) else None
    if isinstance(x, TensorRef):
        return _tensor_pairs(x, y, location)
    if isinstance(x, PickledObject):
        return (
            [(x.args, y.args), (x.state, y.state), (x.items, y.items), (x.dictitems, y.dictitems)]
            if x.cls == y.cls
            else None
        )
    if isinstance(x, OpaqueCall):  # the whole call: what BUILD set holds a numpy array's bytes
        return (
            [(x.args, y.args), (x.state, y.state), (x.items, y.items), (x.dictitems, y.dictitems)]
            if x.func == y.func
            else None
        )
    if isinstance(x, GlobalName):
        return [] if x.qualname == y.qualname else None
    if isinstance(x, (str, int, bytes, bool, complex, type(None), set, frozenset)):
        return [] if x == y else None
    return []  # Cycle markers and other inert leaves


def _tensor_pairs(x: TensorRef, y: TensorRef, location: Callable[[str], str]) -> list[tuple[Any, Any]] | None:
    fields = ("dtype", "shape", "stride", "offset", "requires_grad", "kind", "layout", "meta_device")
    if any(getattr(x, f) != getattr(y, f) for f in fields):
        return None
    if not _same_storage(x.storage, y.storage, location):
        return None
    return [(x.extra, y.extra)]


def _same_storage(x: Storage | None, y: Storage | None, location: Callable[[str], str]) -> bool:
    if x is None or y is None:
        return x is y
    return (x.key, x.dtype, x.numel, location(x.location)) == (y.key, y.dtype, y.numel, y.location)
