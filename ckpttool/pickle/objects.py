"""Inert records of what a pickle would have done.

The pickle machine never imports a module or calls a function named in a file.
Where a normal unpickler would, it builds one of these records instead: a `Global`
for every name the pickle refers to, a `Call` for every REDUCE / NEWOBJ / INST / OBJ
(with whatever BUILD, APPENDS and SETITEMS later did to the result), and a
`PersistentRef` for every persistent id (torch's storages). Plain data (numbers,
strings, bytes, tuples, lists, dicts, sets) is decoded to the Python values.

Identity carries meaning: the memo makes one pickled object reachable from many
places (tied weights), and these records are shared the same way.
"""

from __future__ import annotations

from typing import Any


class Global:
    """A reference to `module.name`, never resolved."""

    __slots__ = ("module", "name", "qualname")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name
        self.qualname = f"{module}.{name}"

    def __repr__(self) -> str:
        return f"Global({self.qualname})"


CALL = "call"  # REDUCE: func(*args)
NEWOBJ = "newobj"  # NEWOBJ / NEWOBJ_EX: cls.__new__(cls, *args, **kwargs)
INST = "inst"  # INST / OBJ: cls(*args), protocol 0/1 instantiation


class Call:
    """What `func(*args)` (or `cls.__new__(cls, *args)`) would have returned.

    `state` is what BUILD would have passed to `__setstate__` (or `_UNSET`);
    `items` and `dictitems` collect what APPEND(S) / SETITEM(S) added to the result
    when the result is not a real list or dict (an OrderedDict is a Call).
    """

    __slots__ = ("func", "args", "kind", "kwargs", "state", "items", "dictitems")

    def __init__(self, func: Any, args: tuple[Any, ...], kind: str = CALL) -> None:
        self.func = func
        self.args = args
        self.kind = kind
        self.kwargs: dict[Any, Any] | None = None
        self.state: Any = UNSET
        self.items: list[Any] | None = None
        self.dictitems: list[tuple[Any, Any]] | None = None

    @property
    def func_name(self) -> str | None:
        """`module.name` of the callable when it is a plain global, else None."""
        return self.func.qualname if isinstance(self.func, Global) else None

    def __repr__(self) -> str:
        return f"Call({self.func!r}, {len(self.args)} args, {self.kind})"


class PersistentRef:
    """A persistent id: for torch, `('storage', type, key, location, numel, ...)`."""

    __slots__ = ("pid",)

    def __init__(self, pid: Any) -> None:
        self.pid = pid

    def __repr__(self) -> str:
        return f"PersistentRef({self.pid!r})"


class Extension:
    """An EXT1/2/4 code: resolved through the copyreg registry at load time, never here."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


class OutOfBandBuffer:
    """NEXT_BUFFER: data the caller would have had to supply (protocol 5)."""

    __slots__ = ("readonly",)

    def __init__(self) -> None:
        self.readonly = False


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()
