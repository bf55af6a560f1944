"""From the pickle machine's inert graph to the checkpoint model.

The graph says "call `torch._utils._rebuild_tensor_v2` with these arguments"; this
module knows what torch would have built from that and builds the description
instead: a `TensorRef`, an ordered dict, a `torch.Size` tuple, a device string, a
`PickledObject` for an instance of any class. Nothing is imported or called; calls
it does not know stay `OpaqueCall`s.

`Interpreter` walks the inert graph the scan decoded too (each pickle decoded once
per command: the model and the scan's evidence come from the same decoding). Shared
nodes map to shared results (tied weights stay one object), cycles are followed once,
and nesting deeper than `MAX_DEPTH` is a `LimitError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ckpttool.checkpoint import (
    GlobalName,
    OpaqueCall,
    PickledObject,
    Storage,
    TensorRef,
    contiguous_strides,
)
from ckpttool.dtensors import rebuilt_dtensor
from ckpttool.errors import CkptError, LimitError, PickleError, TensorLayoutError
from ckpttool.pickle.objects import CALL, NEWOBJ, UNSET, Call, Global, PersistentRef
from ckpttool.pickle.state import TrackedGlobal
from ckpttool.pickle.vetted_dtensor import DTENSOR

MAX_DEPTH = 200
PersistentResolver = Callable[[Any], Any]
Builder = Callable[[str, Sequence[Any]], Any]  # (source, arguments) -> value

# Values that are already final: the interpreter passes them through.
_FINAL = (TensorRef, Storage, GlobalName, OpaqueCall, PickledObject, str, int, float, bytes, bool, complex)


_SCALARS = frozenset({int, str, bool, float, bytes, type(None)})
_INTS = frozenset({int})
_PID_ITEMS = frozenset({int, str, Global, TrackedGlobal})


def _only(items: tuple[Any, ...], types: frozenset[type]) -> bool:
    for item in items:  # a loop: cheaper than all() over a generator for 2 to 6 items
        if type(item) not in types:
            return False
    return True


_TENSOR_V2 = "torch._utils._rebuild_tensor_v2"


def _malformed(name: str, exc: Exception, source: str) -> PickleError:
    """Arguments a file chose in a shape the builder cannot take: the file's error."""
    return PickleError(f"malformed arguments to {name}: {type(exc).__name__}", path=source)


class Cycle:
    """Where a tuple would contain itself: shown, not followed."""

    def __str__(self) -> str:
        return "<cycle>"


class StateDict(dict):  # type: ignore[type-arg]
    """An OrderedDict from the file, with the `_metadata` torch attaches to state_dicts
    (module versions that `load_state_dict` uses to upgrade old checkpoints)."""

    metadata: Any = None


class Interpreter:
    def __init__(self, resolve_persistent: PersistentResolver, source: str) -> None:
        self.resolve_persistent = resolve_persistent
        self.source = source
        self.memo: dict[int, Any] = {}
        self.busy: set[int] = set()
        self.depth = 0

    def value(self, node: Any) -> Any:
        # a Call (a state_dict's every tensor) is no final value: spare it the isinstance
        if type(node) is not Call and (node is None or isinstance(node, _FINAL)):
            return node
        key = id(node)
        if key in self.memo:
            return self.memo[key]
        # torch.save's tensors, by the 10^5: nothing below them to walk, so none of the walk's
        # bookkeeping (they hold no container that could lead back to them)
        if type(node) is Call and node.kind == CALL and self.depth < MAX_DEPTH and node.func_name == _TENSOR_V2:
            plain = self._plain_tensor(node.args)
            if plain is not None:
                self.memo[key] = plain
                return plain
        if key in self.busy:
            return Cycle()
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise LimitError(f"object tree nested more than {MAX_DEPTH} levels deep", path=self.source)
        self.busy.add(key)
        try:
            return self._value(node, key)
        finally:
            self.busy.discard(key)
            self.depth -= 1

    def _value(self, node: Any, key: int) -> Any:
        if isinstance(node, list):
            out: list[Any] = []
            self.memo[key] = out
            out.extend(self.value(item) for item in node)
            return out
        if isinstance(node, dict):
            filled = self._fill_dict(key, node.items(), [])
            if type(node) is StateDict and node.metadata is not None:
                kept = StateDict(filled)
                kept.metadata = self.value(node.metadata)
                self.memo[key] = kept
                return kept
            return filled
        if isinstance(node, Call):
            return self._call(node, key)
        result = self._leaf(node)
        self.memo[key] = result
        return result

    def _leaf(self, node: Any) -> Any:
        if isinstance(node, tuple):
            return tuple(self.value(item) for item in node)
        if isinstance(node, (set, frozenset)):
            return type(node)(self.value(item) for item in node)
        if isinstance(node, Global):
            return GlobalName(node.qualname)
        if isinstance(node, PersistentRef):
            return self.resolve_persistent(self.value(node.pid))
        if isinstance(node, bytearray):
            return bytes(node)
        return OpaqueCall(type(node).__name__, ())

    def _fill_dict(self, key: int, pairs: Any, more: list[tuple[Any, Any]]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        self.memo[key] = out
        value = self.value
        for k, v in list(pairs) + more:  # a state_dict's string keys, by the 10^5, as they are
            out[k if type(k) is str else _hashable(value(k))] = value(v)
        return out

    def _call(self, node: Call, key: int) -> Any:
        name = node.func_name
        if name in DICT_TYPES:
            return self._dict(node, key)
        if node.kind == NEWOBJ or name == "copyreg._reconstructor" or node.kind == "inst":
            return self._instance(node, key)
        builder = BUILDERS.get(name or "")
        if builder is not None:
            result = self._build(builder, name or "", node.args)
        else:
            result = OpaqueCall(name, tuple(self.value(a) for a in node.args))
        self.memo[key] = result
        if isinstance(result, OpaqueCall):
            self._fill_call(result, node)
        return result

    def _dict(self, node: Call, key: int) -> dict[Any, Any]:
        """An OrderedDict call, filled; a state_dict's `_metadata` (given by BUILD) kept."""
        filled = self._fill_dict(key, _pairs_argument(node.args), node.dictitems or [])
        state = node.state
        if type(state) is not dict or state.get("_metadata") is None:
            return filled
        kept = StateDict(filled)
        self.memo[key] = kept
        kept.metadata = self.value(state["_metadata"])
        return kept

    def _build(self, builder: Builder, name: str, args: tuple[Any, ...]) -> Any:
        """What torch's rebuild function would return, described; arguments a file chose
        can have any shape, and a shape the builder cannot take is the file's error."""
        try:
            if builder is _rebuild_tensor_v2 and (plain := self._plain_tensor(args)) is not None:
                return plain
            return builder(self.source, [self._argument(a) for a in args])
        except CkptError:
            raise
        except Exception as exc:
            raise _malformed(name, exc, self.source) from None

    def _plain_tensor(self, args: tuple[Any, ...]) -> TensorRef | None:
        """`_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict())` as
        torch.save writes each tensor, built in one step: what the general path builds from
        these arguments, without its work per argument. Any other arguments: None."""
        if len(args) != 6:
            return None
        ref, offset, size, stride, grad, hooks = args
        if type(ref) is not PersistentRef or type(offset) is not int or type(grad) is not bool:
            return None
        pid = ref.pid
        if type(size) is not tuple or type(stride) is not tuple or type(pid) is not tuple or type(hooks) is not Call:
            return None
        if not (_only(size, _INTS) and _only(stride, _INTS) and _only(pid, _PID_ITEMS)):
            return None
        if hooks.func_name not in DICT_TYPES or hooks.args or hooks.dictitems or hooks.state is not UNSET:
            return None
        try:
            storage = self.resolve_persistent(pid)
        except CkptError:
            raise
        except Exception as exc:
            raise _malformed(_TENSOR_V2, exc, self.source) from None
        if type(storage) is not Storage:
            return tensor(self.source, storage, offset, size, stride)  # raises as the general path does
        return TensorRef(storage.dtype, size, stride, offset, storage, grad)

    def _argument(self, node: Any) -> Any:
        """`value(node)` for a rebuild function's argument, without the walk's bookkeeping for
        what a tensor's arguments nearly always are (numbers, a shape, a storage id, an empty
        OrderedDict): a 50,000-tensor file passes 300,000 of them."""
        kind = type(node)
        if kind in _SCALARS or (kind is tuple and _only(node, _INTS)):
            return node
        if kind is PersistentRef and type(node.pid) is tuple and _only(node.pid, _PID_ITEMS):
            return self.resolve_persistent(node.pid)
        if kind is Call and node.func_name in DICT_TYPES and not (node.args or node.dictitems):
            if node.state is UNSET:
                return StateDict()
        return self.value(node)

    def _fill_call(self, result: OpaqueCall, node: Call) -> None:
        # After the memo entry, so that a state referring back to the call ends there.
        if node.state is not UNSET:
            result.state = self.value(node.state)
        if node.items is not None:
            result.items = [self.value(i) for i in node.items]
        if node.dictitems is not None:
            result.dictitems = {_hashable(self.value(k)): self.value(v) for k, v in node.dictitems}

    def _instance(self, node: Call, key: int) -> Any:
        cls, args = node.func, node.args
        if node.func_name == "copyreg._reconstructor" and args:
            cls, args = args[0], ()
        qualname = cls.qualname if isinstance(cls, Global) else str(self.value(cls))
        if qualname == "torch.nn.parameter.Parameter" and args:
            result = _parameter(self.source, [self.value(a) for a in args])
            self.memo[key] = result
            return result
        obj = PickledObject(qualname)
        self.memo[key] = obj
        obj.args = tuple(self.value(a) for a in args)
        if node.state is not UNSET:
            obj.state = self.value(node.state)
        if node.items is not None:
            obj.items = [self.value(i) for i in node.items]
        if node.dictitems is not None:
            obj.dictitems = {_hashable(self.value(k)): self.value(v) for k, v in node.dictitems}
        return obj


# -- torch's rebuild functions, described instead of called -----------------------------------


def tensor(source: str, storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None = None) -> TensorRef:
    if not isinstance(storage, Storage):
        raise TensorLayoutError(f"tensor built from {_kind(storage)} instead of a storage", path=source)
    shape, strides = _int_tuple(size, "size", source), _int_tuple(stride, "stride", source)
    if type(offset) is not int:
        raise TensorLayoutError(f"storage offset is {_kind(offset)}", path=source)
    return TensorRef(dtype or storage.dtype, shape, strides, offset, storage)


def _rebuild_tensor_v2(source: str, a: Sequence[Any]) -> TensorRef:
    _need(a, 4, "_rebuild_tensor_v2", source)
    t = tensor(source, a[0], a[1], a[2], a[3])
    t.requires_grad = len(a) > 4 and a[4] is True
    return t


def _rebuild_tensor_v3(source: str, a: Sequence[Any]) -> TensorRef:
    _need(a, 7, "_rebuild_tensor_v3", source)
    t = tensor(source, a[0], a[1], a[2], a[3], _torch_dtype(a[6]))
    t.requires_grad = a[4] is True
    return t


def _rebuild_tensor(source: str, a: Sequence[Any]) -> TensorRef:
    _need(a, 4, "_rebuild_tensor", source)
    return tensor(source, a[0], a[1], a[2], a[3])


def _parameter(source: str, a: Sequence[Any]) -> Any:
    data = a[0] if a else None
    if not isinstance(data, TensorRef):
        return OpaqueCall("torch._utils._rebuild_parameter", tuple(a))
    requires_grad = a[1] is not False if len(a) > 1 else True
    return _copy_tensor(data, kind="parameter", requires_grad=requires_grad)


def _rebuild_qtensor(source: str, a: Sequence[Any]) -> TensorRef:
    _need(a, 5, "_rebuild_qtensor", source)
    t = tensor(source, a[0], a[1], a[2], a[3])
    t.extra = {"quantizer": a[4]}
    t.requires_grad = len(a) > 5 and a[5] is True
    return t


def _rebuild_meta(source: str, a: Sequence[Any]) -> TensorRef:
    _need(a, 3, "_rebuild_meta_tensor_no_storage", source)
    dtype = _torch_dtype(a[0]) or "float32"
    shape, stride = _int_tuple(a[1], "size", source), _int_tuple(a[2], "stride", source)
    return TensorRef(dtype, shape, stride, 0, None, requires_grad=len(a) > 3 and a[3] is True)


def _rebuild_from_type_v2(source: str, a: Sequence[Any]) -> Any:
    # (func, new_type, args, state): the tensor is func(*args); new_type is its class.
    _need(a, 3, "_rebuild_from_type_v2", source)
    func, new_type, args = _qualname(a[0]), _qualname(a[1]), a[2]
    if func == "torch._utils._rebuild_wrapper_subclass" and new_type == DTENSOR and len(a) > 3:
        shard = rebuilt_dtensor(args, a[3])  # the local shard, where in the whole tensor
        return shard if shard is not None else OpaqueCall("torch._tensor._rebuild_from_type_v2", tuple(a))
    builder = BUILDERS.get(func or "")
    if builder is None or not isinstance(args, tuple):
        return OpaqueCall("torch._tensor._rebuild_from_type_v2", tuple(a))
    result = builder(source, args)
    if isinstance(result, TensorRef) and new_type not in (None, "torch.Tensor", "torch.nn.parameter.Parameter"):
        result = _copy_tensor(result, kind=new_type or result.kind)
    return result


def _rebuild_sparse(source: str, a: Sequence[Any]) -> Any:
    # data is (indices, values, size, ...) for COO, (crow, col, values, size) for CSR.
    _need(a, 2, "_rebuild_sparse_tensor", source)
    layout, data = a[0], a[1]
    parts = [p for p in data if isinstance(p, TensorRef)] if isinstance(data, tuple) else []
    sizes = [p for p in data if isinstance(p, tuple)] if isinstance(data, tuple) else []
    if not parts or not sizes:
        return OpaqueCall("torch._utils._rebuild_sparse_tensor", tuple(a))
    size = _int_tuple(sizes[0], "size", source)
    values = parts[-1]
    # The sparse tensor itself has no storage: its parts (indices, values) do.
    t = TensorRef(values.dtype, size, contiguous_strides(size), 0, None, layout=str(layout))
    t.meta_device = values.device
    # COO's fourth element is its is_coalesced flag, which torch.load's validation checks.
    coalesced = data[3] if isinstance(data, tuple) and len(data) == 4 and isinstance(data[3], bool) else None
    t.extra = {"parts": parts, "coalesced": coalesced}
    return t


def _size(source: str, a: Sequence[Any]) -> Any:
    return tuple(a[0]) if a and isinstance(a[0], (tuple, list)) else OpaqueCall("torch.Size", tuple(a))


def _device(source: str, a: Sequence[Any]) -> Any:
    if len(a) == 1 and isinstance(a[0], str):
        return a[0]
    if len(a) == 2 and isinstance(a[0], str) and type(a[1]) is int:
        return f"{a[0]}:{a[1]}"
    return OpaqueCall("torch.device", tuple(a))


def _layout(source: str, a: Sequence[Any]) -> Any:
    return a[0].removeprefix("torch.") if a and isinstance(a[0], str) else OpaqueCall("_get_layout", tuple(a))


def _encode(source: str, a: Sequence[Any]) -> Any:
    # protocol 2 writes bytes as _codecs.encode(text, 'latin1'); decode that, nothing else.
    if len(a) == 2 and isinstance(a[0], str) and a[1] in ("latin1", "latin-1"):
        return a[0].encode("latin-1", "surrogatepass")
    if not a:
        return b""
    return OpaqueCall("_codecs.encode", tuple(a))


def _collection(kind: type) -> Builder:
    def build(source: str, a: Sequence[Any]) -> Any:
        try:
            return kind(a[0]) if a else kind()
        except TypeError:
            return OpaqueCall(f"builtins.{kind.__name__}", tuple(a))

    return build


def _bytes_like(name: str) -> Builder:
    """builtins.bytes() / bytearray(b'...'): how protocols 0-2 spell empty bytes and bytearrays."""

    def build(source: str, a: Sequence[Any]) -> Any:
        if not a:
            return b""
        if len(a) == 1 and isinstance(a[0], bytes):
            return a[0]
        if len(a) == 2 and isinstance(a[0], str) and a[1] in ("latin1", "latin-1"):
            return a[0].encode("latin-1", "surrogatepass")
        return OpaqueCall(name, tuple(a))

    return build


def _complex(source: str, a: Sequence[Any]) -> Any:
    if len(a) <= 2 and all(type(x) in (int, float) for x in a):
        return complex(*a)
    return OpaqueCall("builtins.complex", tuple(a))


BUILDERS: dict[str, Builder] = {
    _TENSOR_V2: _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _parameter,
    "torch._utils._rebuild_parameter_with_state": _parameter,
    "torch._utils._rebuild_qtensor": _rebuild_qtensor,
    "torch._utils._rebuild_meta_tensor_no_storage": _rebuild_meta,
    "torch._utils._rebuild_sparse_tensor": _rebuild_sparse,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.Size": _size,
    "torch.device": _device,
    "torch.serialization._get_layout": _layout,
    "_codecs.encode": _encode,
    "builtins.set": _collection(set),
    "builtins.frozenset": _collection(frozenset),
    "builtins.bytearray": _bytes_like("builtins.bytearray"),
    "builtins.bytes": _bytes_like("builtins.bytes"),
    "builtins.complex": _complex,
}
DICT_TYPES = frozenset({"collections.OrderedDict", "collections.Counter", "builtins.dict"})


def _copy_tensor(t: TensorRef, *, kind: str, requires_grad: bool | None = None) -> TensorRef:
    return TensorRef(
        t.dtype,
        t.shape,
        t.stride,
        t.offset,
        t.storage,
        t.requires_grad if requires_grad is None else requires_grad,
        kind,
        t.layout,
        t.extra,
        t.meta_device,
    )


def _qualname(value: Any) -> str | None:
    return value.qualname if isinstance(value, (Global, GlobalName)) else None


def _torch_dtype(value: Any) -> str | None:
    name = _qualname(value)
    return name.removeprefix("torch.") if name and name.startswith("torch.") else None


def _pairs_argument(args: Sequence[Any]) -> list[tuple[Any, Any]]:
    """OrderedDict(...) arguments: nothing, or one list of [key, value] pairs."""
    if not args:
        return []
    first = args[0]
    if isinstance(first, (list, tuple)):
        return [tuple(p) for p in first if isinstance(p, (list, tuple)) and len(p) == 2]
    if isinstance(first, dict):
        return list(first.items())
    return []


def _int_tuple(value: Any, what: str, source: str) -> tuple[int, ...]:
    if isinstance(value, list):
        value = tuple(value)
    if type(value) is not tuple or not all(type(v) is int for v in value):
        raise TensorLayoutError(f"tensor {what} is {_kind(value)}, not a tuple of integers", path=source)
    return value


def _need(args: Sequence[Any], n: int, func: str, source: str) -> None:
    if len(args) < n:
        raise TensorLayoutError(f"{func} called with {len(args)} arguments, needs {n}", path=source)


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}"


def _hashable(key: Any) -> Any:
    try:
        hash(key)
    except TypeError:
        return repr(key)
    return key
