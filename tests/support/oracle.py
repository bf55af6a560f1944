"""What CPython's own unpicklers meet in a pickle, without running anything it names.

`pickle.Unpickler` subclassed with a `find_class` that records the name and returns a
harmless stand-in class: calling it, instantiating it, giving it state or items does
nothing but record what happened. The same bytes are read the four ways Python code
reads pickles, since they differ on irregular frames: `pickle.loads`, an `io.BytesIO`
(how torch.load reads `data.pkl`), a buffered file on disk (how it reads legacy files),
and the pure-Python `pickle._Unpickler`.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckpttool.errors import PickleError
from ckpttool.pickle import Decoded, decode
from ckpttool.pickle.machine import USE_CALL, USE_INSTANTIATE, TrackedGlobal

READINGS = ("loads", "bytesio", "file", "python")


def python3_name(module: str, name: str) -> str:
    """Both sides compared after the Python 2 -> 3 renaming unpicklers apply below protocol 3."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


@dataclass
class Met:
    """The globals a reading met, which it called and which it instantiated, and how it ended."""

    globals: set[str] = field(default_factory=set)
    called: set[str] = field(default_factory=set)
    instantiated: set[str] = field(default_factory=set)
    error: str | None = None


class _Inert:
    """Whatever a stand-in returns: accepts every operation an unpickler applies."""

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass


def _stand_in(qualname: str, met: Met) -> type:
    class Meta(type):
        def __call__(cls, *args: Any, **kwargs: Any) -> _Inert:  # REDUCE, INST, OBJ
            met.called.add(qualname)
            return _Inert()

    def new(cls: type, *args: Any, **kwargs: Any) -> _Inert:  # NEWOBJ
        met.instantiated.add(qualname)
        return _Inert()

    return Meta(qualname, (), {"__new__": new})


def _recording(base: type) -> Callable[[Any, Met], Any]:
    class Recording(base):  # type: ignore[misc, valid-type]
        def __init__(self, file: Any, met: Met) -> None:
            super().__init__(file, encoding="utf-8")  # torch.load's encoding
            self.met = met

        def find_class(self, module: str, name: str) -> Any:
            qualname = python3_name(module, name)
            self.met.globals.add(qualname)
            return _stand_in(qualname, self.met)

        def persistent_load(self, pid: Any) -> Any:
            return _Inert()

    return Recording


_C_UNPICKLER = _recording(pickle.Unpickler)
_PY_UNPICKLER = _recording(pickle._Unpickler)  # type: ignore[attr-defined]


def cpython_meets(data: bytes, reading: str) -> Met:
    """Load `data` one of the READINGS ways with stand-ins; never raises."""
    met = Met()
    try:
        if reading == "loads":
            _load_bytes(data, met)
        elif reading == "bytesio":
            _C_UNPICKLER(io.BytesIO(data), met).load()
        elif reading == "file":
            _load_from_disk(data, met)
        else:
            _PY_UNPICKLER(io.BytesIO(data), met).load()
    except Exception as exc:  # noqa: BLE001 - any failure ends the reading, as it would in torch.load
        met.error = f"{type(exc).__name__}: {exc}"
    return met


def _load_bytes(data: bytes, met: Met) -> None:
    # pickle.loads has no find_class hook; a C Unpickler over a bytes-backed buffer with
    # `peek` reads exactly as loads does (the whole input is one buffer).
    _C_UNPICKLER(_WholeBuffer(data), met).load()


class _WholeBuffer(io.BytesIO):
    """A file whose `peek` hands over everything: the C unpickler then holds the whole input
    in one buffer, as `pickle.loads` does."""

    def peek(self, size: int = 0) -> bytes:
        return self.getvalue()[self.tell() :]


def _load_from_disk(data: bytes, met: Met) -> None:
    fd, path = tempfile.mkstemp(suffix=".pkl")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        with open(path, "rb") as f:
            _C_UNPICKLER(f, met).load()
    finally:
        os.unlink(path)


def ckpttool_meets(data: bytes) -> tuple[Met, Decoded | None]:
    """The same facts from ckpttool's machine (what it decoded before an error, too)."""
    met = Met()
    try:
        decoded: Decoded | None = decode(data)
    except PickleError as exc:
        met.error = exc.message
        decoded = exc.partial
    for ref in decoded.globals if decoded is not None else []:
        qualname = python3_name(ref.module, ref.name)
        met.globals.add(qualname)
        uses = ref.uses if isinstance(ref, TrackedGlobal) else set()
        if USE_CALL in uses:
            met.called.add(qualname)
        if USE_INSTANTIATE in uses:
            met.instantiated.add(qualname)
    return met, decoded


def has_differential(decoded: Decoded | None) -> bool:
    return decoded is not None and any("parser differential" in p for p in decoded.problems)
