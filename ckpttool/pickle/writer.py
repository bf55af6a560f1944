"""Writing an inert graph back as a pickle, in protocol 2 as torch.save does.

The graph is what the machine decoded (or what ckpttool built): plain values, plus
`Global`, `Call` and `PersistentRef` records that are written back as GLOBAL,
REDUCE / NEWOBJ (+ APPENDS, SETITEMS, BUILD) and BINPERSID. Nothing is imported:
a global is written by name. Every object is memoized on first write, so shared
references and cycles come out as they went in.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ckpttool.errors import FormatError, LimitError
from ckpttool.pickle.objects import NEWOBJ, UNSET, Call, Global, PersistentRef

MAX_DEPTH = 300
_BATCH = 1000


class PickleWriter:
    """`persistent` may rewrite each persistent id: it returns the new id (a tuple), or any
    other object to write in the id's place (legacy module ids become their class)."""

    def __init__(self, persistent: Callable[[Any], Any] | None = None) -> None:
        self.persistent = persistent
        self.out = bytearray()
        self.memo: dict[int, int] = {}
        self.alive: list[Any] = []  # memo keys are ids: keep temporaries from being reused
        self.globals: dict[str, int] = {}
        self.depth = 0

    def dump(self, obj: Any) -> bytes:
        self.out += b"\x80\x02"
        self.save(obj)
        self.out += b"."
        return bytes(self.out)

    def save(self, obj: Any) -> None:
        if self.depth > MAX_DEPTH:
            raise LimitError(f"object nested more than {MAX_DEPTH} levels deep")
        self.depth += 1
        try:
            self._save(obj)
        finally:
            self.depth -= 1

    def _save(self, obj: Any) -> None:
        if obj is None or obj is True or obj is False:
            self.out += {None: b"N", True: b"\x88", False: b"\x89"}[obj]
        elif type(obj) is int:
            self._int(obj)
        elif type(obj) is float:
            self.out += b"G" + struct.pack(">d", obj)
        elif id(obj) in self.memo:
            self._get(self.memo[id(obj)])
        elif isinstance(obj, Global):
            self._global(obj.module, obj.name)
        else:
            self._object(obj)

    def _object(self, obj: Any) -> None:
        kind = type(obj)
        if kind is str:
            raw = obj.encode("utf-8", "surrogatepass")
            self.out += b"X" + struct.pack("<I", len(raw)) + raw
            self._put(obj)
        elif kind is tuple:
            self._tuple(obj)
        elif kind is list:
            self.out += b"]"
            self._put(obj)
            self._appends(obj)
        elif kind is dict:
            self.out += b"}"
            self._put(obj)
            self._setitems(list(obj.items()))
        elif isinstance(obj, Call):
            self._call(obj)
        elif isinstance(obj, PersistentRef):
            self._persistent(obj)
        elif kind in (bytes, bytearray, set, frozenset):
            self._reduced_builtin(obj)
        else:
            raise FormatError(f"cannot write a {kind.__name__} into a pickle")

    # -- pieces -----------------------------------------------------------------------------

    def _int(self, value: int) -> None:
        if 0 <= value < 256:
            self.out += b"K" + bytes([value])
        elif 0 <= value < 65536:
            self.out += b"M" + struct.pack("<H", value)
        elif -(2**31) <= value < 2**31:
            self.out += b"J" + struct.pack("<i", value)
        else:
            raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            if len(raw) < 256:
                self.out += b"\x8a" + bytes([len(raw)]) + raw
            else:
                self.out += b"\x8b" + struct.pack("<i", len(raw)) + raw

    def _put(self, obj: Any) -> None:
        index = len(self.memo) + len(self.globals)
        self.memo[id(obj)] = index
        self.alive.append(obj)
        self._put_index(index)

    def _put_index(self, index: int) -> None:
        self.out += b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index)

    def _get(self, index: int) -> None:
        self.out += b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)

    def _global(self, module: str, name: str) -> None:
        qualname = f"{module}.{name}"
        if qualname in self.globals:
            self._get(self.globals[qualname])
            return
        self.out += b"c" + module.encode("utf-8") + b"\n" + name.encode("utf-8") + b"\n"
        index = len(self.memo) + len(self.globals)
        self.globals[qualname] = index
        self._put_index(index)

    def _tuple(self, obj: tuple[Any, ...]) -> None:
        if not obj:
            self.out += b")"
            return
        short = len(obj) <= 3
        if not short:
            self.out += b"("
        for item in obj:
            self.save(item)
        if id(obj) in self.memo:  # the tuple was reached through its own items: use that copy
            self.out += b"1" if not short else b"0" * len(obj)
            self._get(self.memo[id(obj)])
            return
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(obj), b"t") if short else b"t"
        self._put(obj)

    def _appends(self, items: list[Any]) -> None:
        for start in range(0, len(items), _BATCH):
            self.out += b"("
            for item in items[start : start + _BATCH]:
                self.save(item)
            self.out += b"e"

    def _setitems(self, pairs: list[tuple[Any, Any]]) -> None:
        for start in range(0, len(pairs), _BATCH):
            self.out += b"("
            for key, value in pairs[start : start + _BATCH]:
                self.save(key)
                self.save(value)
            self.out += b"u"

    def _call(self, call: Call) -> None:
        if call.kwargs:
            raise FormatError("cannot write NEWOBJ_EX (keyword arguments) in protocol 2")
        self.save(call.func)
        self.save(tuple(call.args))
        self.out += b"\x81" if call.kind == NEWOBJ else b"R"  # INST/OBJ are calls too
        self._put(call)
        if call.items:
            self._appends(call.items)
        if call.dictitems:
            self._setitems(call.dictitems)
        if call.state is not UNSET:
            self.save(call.state)
            self.out += b"b"

    def _persistent(self, ref: PersistentRef) -> None:
        pid = self.persistent(ref.pid) if self.persistent else ref.pid
        if isinstance(pid, tuple):
            self.save(pid)
            self.out += b"Q"
        else:
            self.save(pid)

    def _reduced_builtin(self, obj: Any) -> None:
        """Protocol 2 has no opcode for these: torch writes them as calls."""
        if isinstance(obj, bytes):
            self._global("_codecs", "encode")
            self.save((obj.decode("latin-1"), "latin1"))
            self.out += b"R"
        elif isinstance(obj, bytearray):
            self._global("builtins", "bytearray")
            self.save((bytes(obj).decode("latin-1"), "latin-1"))
            self.out += b"R"
        else:
            self._global("builtins", type(obj).__name__)
            self.save((list(obj),))
            self.out += b"R"
        self._put(obj)


def dumps(obj: Any, persistent: Callable[[Any], Any] | None = None) -> bytes:
    return PickleWriter(persistent).dump(obj)
