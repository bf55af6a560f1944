"""The state one decoding run holds, and the helpers every opcode handler shares.

`MachineState` keeps the stack, the MARK stack, the memo and what a review needs (the
globals met, the opcodes torch would refuse, the problems), and knows how to read an
argument, fail with a typed error at a byte offset, and refuse work past `Limits`. The
handlers themselves live in `scalar_ops`, `container_ops` and `call_ops`; the loop that
drives them in `machine`.
"""

from __future__ import annotations

import _compat_pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckpttool.errors import LimitError, PickleError
from ckpttool.pickle.objects import Call, Global, PersistentRef


@dataclass(frozen=True)
class Limits:
    """Bounds on the work one pickle may cause. Exceeding any is a `LimitError`."""

    max_bytes: int = 4 << 30
    max_opcodes: int = 50_000_000
    max_memo: int = 10_000_000
    max_mark_depth: int = 10_000
    max_text_line: int = 1 << 20  # of a global's module or name
    max_long_bytes: int = 1 << 16
    max_key_depth: int = 64
    max_key_elements: int = 100_000


DEFAULT_LIMITS = Limits()


@dataclass
class Decoded:
    """One decoded pickle: its value and what a security review needs to know."""

    value: Any
    start: int
    end: int
    protocol: int
    opcodes: int
    globals: list[Global]
    foreign_opcodes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    lossy: list[str] = field(default_factory=list)
    # Every REDUCE / NEWOBJ / INST / OBJ, in order, reachable from the value or not: a
    # review vets each call's arguments (what runs at load time).
    calls: list[Call] = field(default_factory=list)
    # What torch's weights_only loader refuses that runs nothing by itself (a persistent id
    # that is not a storage, SETITEMS on a non-dict); refused opcodes are in foreign_opcodes.
    refusals: list[str] = field(default_factory=list)


# How a global was used; a Global's `uses` is a set of these.
USE_CALL = "call"
USE_INSTANTIATE = "instantiate"
USE_BUILD = "build"
USE_REFERENCE = "reference"

# Containers that torch lets SETITEM(S) fill (collections.OrderedDict is a Call here).
DICT_LIKE_GLOBALS = frozenset({"collections.OrderedDict", "collections.Counter"})
PLAIN_KEY_TYPES = (str, int, float, bytes, bool, type(None))

unpack_u32 = struct.Struct("<I").unpack_from
unpack_i32 = struct.Struct("<i").unpack_from
unpack_u16 = struct.Struct("<H").unpack_from
unpack_u64 = struct.Struct("<Q").unpack_from
unpack_f64 = struct.Struct(">d").unpack_from


class TrackedGlobal(Global):
    """A Global that remembers how the pickle used it."""

    __slots__ = ("uses", "offset")

    def __init__(self, module: str, name: str, offset: int) -> None:
        super().__init__(module, name)
        self.uses: set[str] = set()
        self.offset = offset


@dataclass(frozen=True)
class Hooks:
    """What a reader needs while decoding: readers build their models from the inert graph
    afterwards, but for joblib, which keeps array bytes between opcodes."""

    # After BUILD on `target` at `pos`: where the opcodes go on, for readers that keep
    # data between opcodes (joblib writes array bytes after its wrapper's BUILD).
    after_build: Callable[[Any, int], int] | None = None


NO_HOOKS = Hooks()


class MachineState:
    def __init__(
        self, data: Any, start: int, end: int, limits: Limits, source: str | None, hooks: Hooks, stream_end: int
    ) -> None:
        if end - start > limits.max_bytes:
            raise LimitError(f"pickle of {end - start} bytes exceeds the limit", path=source)
        self.data = data
        self.start = start
        self.end = end
        self.stream_end = max(end, stream_end)  # where a reader of the stream would read on to
        self.limits = limits
        self.source = source
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.protocol = 0
        self.result: Any = None
        self.op_pos = start
        self.globals: list[Global] = []
        self.foreign: dict[str, int] = {}
        self.problems: list[str] = []
        self.lossy: list[str] = []
        self.calls: list[Call] = []
        self.refusals: list[str] = []
        self.hooks = hooks
        self.stop_pos = start
        self.frame_end: int | None = None  # end of the FRAME being read, if any
        self.irregular_framing = False

    # -- results and failures ------------------------------------------------------

    def snapshot(self, value: Any, end: int, count: int) -> Decoded:
        return Decoded(
            value=value,
            start=self.start,
            end=end,
            protocol=self.protocol,
            opcodes=count,
            globals=self.globals,
            foreign_opcodes=self.foreign,
            problems=self.problems,
            lossy=self.lossy,
            calls=self.calls,
            refusals=self.refusals,
        )

    def partial(self, exc: PickleError) -> PickleError:
        """Attach what was decoded before the failure: a scan still reports those globals."""
        exc.partial = self.snapshot(None, self.op_pos, -1)
        return exc

    def error(self, message: str, offset: int | None = None) -> PickleError:
        return PickleError(message, path=self.source, offset=offset)

    def limit(self, message: str) -> LimitError:
        return LimitError(f"limit reached: {message}", path=self.source, offset=self.op_pos)

    def differential(self, message: str) -> None:
        """A layout on which CPython's readers (and other parsers) disagree: what runs
        depends on how the file is opened, so the graph is not the one true reading."""
        self.problem(f"parser differential: {message}", lossy=True)

    def refusal(self, message: str) -> None:
        """Something torch's weights_only loader refuses that runs nothing by itself."""
        self.refusals.append(f"{message} (pickle byte {self.op_pos})")

    def problem(self, message: str, *, lossy: bool = False) -> None:
        """Something torch would refuse or only an attack produces. `lossy`: its effect is
        not kept in the graph, so the graph cannot be written back faithfully."""
        self.problems.append(f"{message} (pickle byte {self.op_pos})")
        if lossy:
            self.lossy.append(self.problems[-1])

    # -- reading arguments -------------------------------------------------------

    def past_end(self, message: str, pos: int, needed: int) -> PickleError:
        """The bytes ran out before `needed`: the pickle is truncated, or, where the stream
        goes on past the window decoded (a file larger than the size limit), a reader reads
        on and this is a limit."""
        if self.end < needed <= self.stream_end:
            self.op_pos = pos
            return self.limit(f"{message}, past the {self.end - self.start} bytes decoded")
        return self.error(message, pos)

    def take(self, pos: int, n: int) -> bytes:
        if n < 0 or pos + n > self.end:
            raise self.past_end(f"argument of {n} bytes runs past the end of the pickle", pos, pos + max(n, 0))
        return bytes(self.data[pos : pos + n])

    def line(self, pos: int, *, name: bool = False) -> tuple[bytes, int]:
        """A text argument up to its newline, which CPython reads however long it is (a
        string, or a number whose C reading stops at a NUL byte). `name`: a global's module
        or name, bounded (no import finds one that long)."""
        limit = min(self.end, pos + self.limits.max_text_line) if name else self.end
        newline = self.data.find(b"\n", pos, limit)
        if newline < 0:
            beyond = -1 if name else self.data.find(b"\n", self.end, self.stream_end)
            raise self.past_end("text argument without its newline", pos, beyond + 1 if beyond >= 0 else -1)
        return bytes(self.data[pos:newline]), newline + 1

    def fixed(self, pos: int, n: int) -> int:
        if pos + n > self.end:
            raise self.past_end("pickle ends inside an opcode argument", pos, pos + n)
        return pos + n

    def c_string(self, text: bytes) -> bytes:
        """A numeric text argument as the C unpickler parses it: as a C string, which ends
        at the first NUL byte (the pure-Python unpickler refuses such a line)."""
        nul = text.find(b"\0")
        if nul < 0:
            return text
        self.differential("a NUL byte inside a numeric text argument")
        return text[:nul]

    def parse_int(self, text: bytes, pos: int) -> int:
        text = self.c_string(text)
        if len(text) > 4300:  # Python's own limit on decimal conversion
            raise self.limit("decimal integer too long")
        try:
            return int(text)
        except ValueError:
            raise self.error("malformed decimal integer", pos) from None

    # -- stack, memo and globals -----------------------------------------------------

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise self.error("MARK expected but none is open", self.op_pos)
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def pop_mark_of(self, metastack: list[list[Any]]) -> list[Any]:
        if not metastack:
            raise self.error("MARK expected but none is open", self.op_pos)
        return metastack.pop()

    def checked_key(self, key: Any) -> Any:
        """Refuse dict keys and set members that are unhashable, or whose hashing would walk
        too much: a tuple shared through the memo can stand for 2**40 elements."""
        if isinstance(key, PLAIN_KEY_TYPES):
            return key
        weights: dict[int, int] = {}  # elements hashing visits under each tuple, by id
        stack: list[tuple[Any, int, bool]] = [(key, 0, False)]
        while stack:
            node, depth, children_done = stack.pop()
            if isinstance(node, (list, dict, set, bytearray)):
                raise self.error(f"unhashable {type(node).__name__} used as a key")
            if not isinstance(node, (tuple, frozenset)) or id(node) in weights:
                continue
            if depth > self.limits.max_key_depth:
                raise self.limit("dict key or set member nested too deeply")
            if not children_done:
                stack.append((node, depth, True))
                stack.extend((child, depth + 1, False) for child in node)
                continue
            weights[id(node)] = 1 + sum(weights.get(id(child), 1) for child in node)
            if weights[id(node)] > self.limits.max_key_elements:
                raise self.limit("dict key or set member too large to hash")
        return key

    def memo_put(self, index: int, value: Any) -> None:
        if index not in self.memo and len(self.memo) >= self.limits.max_memo:
            raise self.limit(f"more than {self.limits.max_memo} memo entries")
        self.memo[index] = value

    def memo_get(self, index: int) -> Any:
        try:
            return self.memo[index]
        except KeyError:
            raise self.error(f"memo slot {index} read before it was written") from None

    def make_global(self, module: str, name: str) -> Global:
        if self.protocol < 3:  # what pickle's fix_imports (and torch) resolve it to
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        ref = TrackedGlobal(module, name, self.op_pos)
        self.globals.append(ref)
        return ref

    def note_call(self, func: Any, use: str, opcode: str) -> None:
        func = legacy_module_class(func)
        if isinstance(func, TrackedGlobal):
            func.uses.add(use)
        else:
            self.problem(f"{opcode} on {describe(func)}, a value computed inside the pickle")


def legacy_module_class(value: Any) -> Any:
    """The class a legacy whole-model persistent id `('module', cls, source_file, source)`
    stands for: torch's legacy loader returns `cls` for it, so using the id is using `cls`."""
    if isinstance(value, PersistentRef):
        pid = value.pid
        if type(pid) is tuple and len(pid) >= 2 and pid[0] == "module" and isinstance(pid[1], Global):
            return pid[1]
    return value


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(value: Any) -> str:
    if isinstance(value, PersistentRef):
        kind = value.pid[0] if isinstance(value.pid, tuple) and value.pid else value.pid
        return f"a value loaded by persistent id {kind!r}"
    if isinstance(value, Global):
        return f"global {value.qualname}"
    if isinstance(value, Call):
        name = value.func_name or "a computed callable"
        return f"the result of {name}(...)"
    return f"a {type(value).__name__}"
