"""The calls an unpickler makes that no REDUCE spells: methods of the objects it built,
and callables those methods may reach.

- APPEND(S) on anything but a list looks up `append`/`extend` on the object; SETITEM(S)
  on anything but a dict calls its `__setitem__`: calls of the object's class (unless
  the class is a container of that kind).
- BUILD with slot state sets each attribute through the class's `__setattr__` (an object
  can forward it elsewhere, as `typing._GenericAlias` does).
- An iterating constructor (`collections.OrderedDict(x)`, `set(x)`, ...) given an object
  the pickle built calls its `keys`/`__iter__`: a call of that object's class.
- A global sitting in an object's state, items or a constructor's arguments is where
  the object's methods (`__setstate__`, `__del__`, `append`, ...) can call it: it is
  judged as called. The callables a vetted or allowlisted function takes by position
  are judged by that function's own rule (`vetted.passes`, `call_ops`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ckpttool.pickle.allowlist import is_allowed
from ckpttool.pickle.call_ops import ARGUMENT_USES, passed_arguments
from ckpttool.pickle.objects import UNSET, Call, Global, PersistentRef
from ckpttool.pickle.state import USE_CALL, USE_INSTANTIATE, legacy_module_class
from ckpttool.pickle.vetted import VETTED, container_kind, is_plain
from ckpttool.pickle.vetted_classes import INSTANTIATED_STATE, PAIR_STATE

# Allowlisted or vetted constructors that iterate (or read keys/items of) what they are given.
ITERATING = frozenset(
    {"collections.OrderedDict", "collections.Counter", "collections.deque", "collections.defaultdict",
     "builtins.set", "builtins.frozenset", "builtins.list", "builtins.tuple", "builtins.dict", "builtins.bytearray",
     "builtins.bytes", "builtins.len"}
)  # fmt: skip
_LEAF_TYPES = frozenset({str, bytes, bytearray, int, float, complex, bool, type(None), PersistentRef})

# Allowlisted torch functions that set attributes of what they build from an argument.
_STATE_TAKING = frozenset(
    {"torch._tensor._rebuild_from_type_v2", "torch._utils._rebuild_parameter_with_state",
     "torch._utils._rebuild_wrapper_subclass"}
)  # fmt: skip

Implicit = tuple[Global, str, str]  # the global, its use, and how the unpickler comes to it
_HELD = "a callable in the"  # how a held callable is noted; every other note is a method of the object


def is_method_call(how: str) -> bool:
    """Whether the note says the unpickler calls a method of an object it built (append,
    __setitem__, __setattr__ for slot state, keys/__iter__), not a callable the object holds."""
    return not how.startswith(_HELD)


def implicit_calls(calls: Iterable[Call]) -> list[Implicit]:
    """Every implicit use in `calls`, in order (one pass; a large state_dict has a call per tensor)."""
    found: list[Implicit] = []
    consuming: set[int] = set()  # the global records that `_consumes_arguments`, by id
    for call in calls:
        func = call.func
        if id(func) in consuming and _only_arguments(call):
            continue  # torch's rebuild functions, sizes, devices: nothing implicit (`_callables_held`)
        if type(func) is PersistentRef:
            func = legacy_module_class(func)
        if isinstance(func, Global) and _consumes_arguments(func.qualname):
            consuming.add(id(func))
            if _only_arguments(call):
                continue
        if isinstance(func, Global):
            if call.items is not None or call.dictitems is not None or call.state is not UNSET:
                found.extend(_method_calls(call, func))
            elif call.args and func.qualname in ITERATING:
                found.extend(_method_calls(call, func))
        if call.args or call.state is not UNSET or call.kwargs or call.items or call.dictitems:
            _callables_held(call, func, found)
    return found


def _only_arguments(call: Call) -> bool:
    """A call with nothing added after it was made: no keywords, items or state."""
    return call.items is None and call.dictitems is None and call.state is UNSET and not call.kwargs


def _consumes_arguments(qualname: str) -> bool:
    """An allowlisted callable whose own code consumes its arguments, nothing of them called."""
    return is_allowed(qualname) and qualname not in ITERATING and qualname not in _STATE_TAKING


def _method_calls(call: Call, func: Global) -> Iterator[Implicit]:
    kind = container_kind(func.qualname)
    if call.items is not None and kind != "list":
        yield func, USE_CALL, "APPEND(S) calls its append/extend"
    if call.dictitems is not None and kind != "dict":
        yield func, USE_CALL, "SETITEM(S) calls its __setitem__"
    if _has_slot_state(call.state) and func.qualname not in PAIR_STATE:
        yield func, USE_CALL, "BUILD's slot state sets attributes through its __setattr__"
    if func.qualname in ITERATING:
        for arg in call.args:
            target = legacy_module_class(arg.func) if isinstance(arg, Call) and not is_plain(arg) else None
            if isinstance(target, Global):
                yield target, USE_CALL, f"iterated by {func.qualname}(...), which calls its keys/__iter__"


def _has_slot_state(state: Any) -> bool:
    return type(state) is tuple and len(state) == 2 and bool(state[1])


def _callables_held(call: Call, func: Any, found: list[Implicit]) -> None:
    args: Any = call.args
    qualname = func.qualname if isinstance(func, Global) else None
    if qualname and _consumes_arguments(qualname):
        args = ()  # torch's rebuild functions, sizes, devices: their own code consumes the arguments
    elif qualname and (is_allowed(qualname) or qualname in VETTED):
        # A global a vetted or allowlisted function takes as an argument is judged by its rule.
        args = [a for a in _passed_on(qualname, args) if type(a) not in _LEAF_TYPES and not _is_global(a)]
    held: list[tuple[str, Any]] = [("arguments", args)] if args else []
    if call.kwargs:
        held.append(("keyword arguments", call.kwargs))
    # A real container's items are data, as a plain list's or dict's are (`globals_in`).
    kind = container_kind(qualname) if qualname else None
    if call.items and kind != "list":
        held.append(("items", call.items))
    if call.dictitems and kind != "dict":
        held.append(("dict items", call.dictitems))
    if call.state is not UNSET:
        held.append(("state", _state_data(call.state, func)))
        found.extend(_state_classes(call.state, func))
    for where, value in held:
        for target in globals_in(value):
            name = func.qualname if isinstance(func, Global) else "a computed callable"
            found.append((target, USE_CALL, f"{_HELD} {where} of {name}(...), where its methods can call it"))


def _is_global(value: Any) -> bool:
    return isinstance(legacy_module_class(value), Global)


def _passed_on(qualname: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments, but for the globals that the function a rebuild calls takes by its
    own rule (`_rebuild_wrapper_subclass` instantiates its first: `call_ops`)."""
    inner, passed = passed_arguments(qualname, args)
    uses = ARGUMENT_USES.get(inner.qualname, ()) if isinstance(inner, Global) else ()
    taken = {position for position, _ in uses if position < len(passed) and _is_global(passed[position])}
    if not taken:
        return args
    rest = tuple(a for position, a in enumerate(passed) if position not in taken)
    return (*args[:2], rest, *args[3:])


def _instantiated_keys(state: Any, func: Any) -> frozenset[str]:
    keys = INSTANTIATED_STATE.get(func.qualname) if isinstance(func, Global) else None
    return keys if keys and isinstance(state, dict) else frozenset()


def _state_data(state: Any, func: Any) -> Any:
    """The state but for the classes its class instantiates (`vetted_classes.INSTANTIATED_STATE`)."""
    keys = _instantiated_keys(state, func)
    return {k: v for k, v in state.items() if k not in keys} if keys else state


def _state_classes(state: Any, func: Any) -> Iterator[Implicit]:
    for key in _instantiated_keys(state, func):
        target = legacy_module_class(state.get(key))
        if isinstance(target, Global):
            yield target, USE_INSTANTIATE, f"instantiated by {func.qualname} from its state"


def globals_in(value: Any) -> list[Global]:
    """The globals inside plain containers, each container visited once; objects the
    pickle built (`Call`) are judged as calls of their own."""
    found: list[Global] = []
    if type(value) in _LEAF_TYPES:
        return found
    seen: set[int] = set()
    stack = [value]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind in _LEAF_TYPES:
            continue
        if kind is tuple or kind is list or kind is dict or kind is set or kind is frozenset:
            if id(node) not in seen:
                seen.add(id(node))
                if kind is dict:
                    stack.extend(node.values())
                    stack.extend(node.keys())
                else:
                    stack.extend(node)
        elif kind is Call:
            if id(node) not in seen:
                seen.add(id(node))
                stack.extend(_container_contents(node))
        elif isinstance(node, Global):
            found.append(node)
    return found


def _container_contents(call: Call) -> list[Any]:
    """What a real container the pickle built holds (an OrderedDict's items, a deque's
    list): looked into like a plain dict or list. Any other object is judged on its own."""
    kind = container_kind(call.func_name) if call.func_name else None
    if kind == "dict":
        return [*(call.dictitems or ()), *call.args]
    if kind == "list":
        return [*(call.items or ()), *call.args]
    return []
