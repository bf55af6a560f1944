"""A pickle decoder that executes nothing.

`decode` walks the opcodes of one pickle (protocols 0-5) and builds the object graph
the pickle describes, with every global, call and persistent id replaced by the inert
records of `ckpttool.pickle.objects`. Nothing named in the stream is imported or
called. While it decodes, it notes what a security review needs: how each global is
used (called, instantiated, given state, only referenced), which opcodes torch's
`weights_only` unpickler would refuse, and shapes that only an attack produces.

It is iterative (no recursion, whatever the nesting), bounded by `Limits`, and fails
with a `PickleError` / `LimitError` that names the byte offset, never with an
IndexError, RecursionError or MemoryError.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ckpttool.errors import CkptError, LimitError, PickleError
from ckpttool.pickle.objects import (
    CALL,
    INST,
    NEWOBJ,
    UNSET,
    Call,
    Extension,
    Global,
    OutOfBandBuffer,
    PersistentRef,
)
from ckpttool.pickle.opcodes import ARGUMENT_BYTES as _ARGUMENT_BYTES
from ckpttool.pickle.opcodes import INLINE, NAMES, TORCH_OPCODES


@dataclass(frozen=True)
class Limits:
    """Bounds on the work one pickle may cause. Exceeding any is a `LimitError`."""

    max_bytes: int = 4 << 30
    max_opcodes: int = 50_000_000
    max_memo: int = 10_000_000
    max_mark_depth: int = 10_000
    max_text_line: int = 1 << 20
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


# How a global was used; a Global's `uses` is a set of these.
USE_CALL = "call"
USE_INSTANTIATE = "instantiate"
USE_BUILD = "build"
USE_REFERENCE = "reference"

# Containers that torch lets SETITEM(S) fill (collections.OrderedDict is a Call here).
_DICT_LIKE_GLOBALS = frozenset({"collections.OrderedDict", "collections.Counter"})
_PLAIN_KEY_TYPES = (str, int, float, bytes, bool, type(None))

_unpack_I = struct.Struct("<I").unpack_from
_unpack_i = struct.Struct("<i").unpack_from
_unpack_H = struct.Struct("<H").unpack_from
_unpack_Q = struct.Struct("<Q").unpack_from
_unpack_d = struct.Struct(">d").unpack_from

_STOP = -1

# Allowlisted torch functions that call or instantiate an argument: (position, use).
_ARGUMENT_USES: dict[str, tuple[tuple[int, str], ...]] = {
    "torch._tensor._rebuild_from_type_v2": ((0, USE_CALL), (1, USE_INSTANTIATE)),
    "torch._utils._rebuild_wrapper_subclass": ((0, USE_INSTANTIATE),),
}


class TrackedGlobal(Global):
    """A Global that remembers how the pickle used it (and the hook a reader set for it)."""

    __slots__ = ("uses", "offset", "hook")

    def __init__(self, module: str, name: str, offset: int, hook: Callable[..., Any] | None) -> None:
        super().__init__(module, name)
        self.uses: set[str] = set()
        self.offset = offset
        self.hook = hook


@dataclass(frozen=True)
class Hooks:
    """ckpttool's own functions to apply while decoding, instead of inert records.

    `reducers` maps a global's `module.name` to a function of the REDUCE arguments
    (torch's rebuild functions, OrderedDict, ...): the reader builds its model in one
    pass. `persistent` turns a persistent id into a storage. `build` receives BUILD on
    a value a reducer built (a state_dict's `_metadata`) and says whether it took it.
    Scans use no hooks.
    """

    reducers: Mapping[str, Callable[[tuple[Any, ...]], Any]] = field(default_factory=dict)
    persistent: Callable[[Any], Any] | None = None
    build: Callable[[Any, Any], bool] | None = None


NO_HOOKS = Hooks()


def decode(
    data: bytes | Any,
    *,
    start: int = 0,
    end: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    source: str | None = None,
    hooks: Hooks = NO_HOOKS,
) -> Decoded:
    """Decode the pickle starting at `data[start]` (bytes or an mmap) without executing it."""
    return _Machine(data, start, len(data) if end is None else end, limits, source, hooks).run()


class _Machine:
    def __init__(self, data: Any, start: int, end: int, limits: Limits, source: str | None, hooks: Hooks) -> None:
        if end - start > limits.max_bytes:
            raise LimitError(f"pickle of {end - start} bytes exceeds the limit", path=source)
        self.data = data
        self.start = start
        self.end = end
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
        self.hooks = hooks
        self.stop_pos = start
        self.dispatch = self._build_dispatch()

    # -- the loop ---------------------------------------------------------------

    def run(self) -> Decoded:
        try:
            count = self.loop()
        except PickleError as exc:
            raise self.partial(exc) from None
        return self.snapshot(self.result, self.stop_pos, count)

    def loop(self) -> int:
        """The opcode loop. Opcodes of torch's own pickles are handled inline (they are
        nearly every opcode of a large checkpoint); the rest go through `dispatch`."""
        data, end, dispatch, memo, metastack = self.data, self.end, self.dispatch, self.memo, self.metastack
        max_ops, max_marks, max_memo = self.limits.max_opcodes, self.limits.max_mark_depth, self.limits.max_memo
        persistent = self.hooks.persistent
        stack = self.stack
        pos, count = self.start, 0
        try:
            while pos >= 0:
                if pos >= end:
                    raise self.error("pickle ends before its STOP opcode (truncated?)", pos)
                count += 1
                if count > max_ops:
                    raise self.limit(f"more than {max_ops} opcodes")
                op = data[pos]
                if op == 0x72:  # LONG_BINPUT
                    index = _unpack_I(data, pos + 1)[0]
                    if len(memo) >= max_memo and index not in memo:
                        raise self.limit(f"more than {max_memo} memo entries")
                    memo[index] = stack[-1]
                    pos += 5
                elif op == 0x4B:  # BININT1
                    stack.append(data[pos + 1])
                    pos += 2
                elif op == 0x68:  # BINGET
                    stack.append(memo[data[pos + 1]])
                    pos += 2
                elif op == 0x71:  # BINPUT
                    memo[data[pos + 1]] = stack[-1]
                    pos += 2
                elif op == 0x6A:  # LONG_BINGET
                    stack.append(memo[_unpack_I(data, pos + 1)[0]])
                    pos += 5
                elif op == 0x58:  # BINUNICODE
                    n = _unpack_I(data, pos + 1)[0]
                    pos += 5
                    if pos + n > end:
                        raise self.error(f"argument of {n} bytes runs past the end of the pickle", pos)
                    try:
                        stack.append(str(data[pos : pos + n], "utf-8", "surrogatepass"))
                    except UnicodeDecodeError:
                        raise self.error("string is not valid UTF-8", pos) from None
                    pos += n
                elif op == 0x28:  # MARK
                    if len(metastack) >= max_marks:
                        raise self.limit(f"more than {max_marks} nested MARKs")
                    metastack.append(stack)
                    stack = []
                    pos += 1
                elif op == 0x74:  # TUPLE
                    items = tuple(stack)
                    stack = self.pop_mark_of(metastack)
                    stack.append(items)
                    pos += 1
                elif op == 0x85:  # TUPLE1
                    stack[-1] = (stack[-1],)
                    pos += 1
                elif op == 0x86:  # TUPLE2
                    second = stack.pop()
                    stack[-1] = (stack[-1], second)
                    pos += 1
                elif op == 0x87:  # TUPLE3
                    third, second = stack.pop(), stack.pop()
                    stack[-1] = (stack[-1], second, third)
                    pos += 1
                elif op == 0x52:  # REDUCE
                    self.op_pos = pos
                    args = stack.pop()
                    stack[-1] = self.reduce(stack[-1], args)
                    pos += 1
                elif op == 0x51:  # BINPERSID
                    self.op_pos = pos
                    stack[-1] = persistent(stack[-1]) if persistent else self.persistent_ref(stack[-1])
                    pos += 1
                elif op == 0x89:  # NEWFALSE
                    stack.append(False)
                    pos += 1
                elif op == 0x88:  # NEWTRUE
                    stack.append(True)
                    pos += 1
                elif op == 0x29:  # EMPTY_TUPLE
                    stack.append(())
                    pos += 1
                elif op == 0x4E:  # NONE
                    stack.append(None)
                    pos += 1
                elif op == 0x4D:  # BININT2
                    stack.append(_unpack_H(data, pos + 1)[0])
                    pos += 3
                elif op == 0x4A:  # BININT
                    stack.append(_unpack_i(data, pos + 1)[0])
                    pos += 5
                elif op == 0x75:  # SETITEMS
                    self.op_pos = pos
                    pairs = stack
                    stack = self.pop_mark_of(metastack)
                    if len(pairs) % 2:
                        raise self.error("SETITEMS with an odd number of items", pos)
                    self.set_items(stack[-1], pairs, "SETITEMS")
                    pos += 1
                elif op == 0x7D:  # EMPTY_DICT
                    stack.append({})
                    pos += 1
                else:
                    handler = dispatch[op]
                    if handler is None:
                        raise self.error(f"invalid opcode 0x{op:02x}", pos)
                    self.op_pos = pos
                    self.stack = stack
                    pos = handler(pos + 1)
                    stack = self.stack
        except (IndexError, struct.error):
            raise self.error(self.index_problem(pos), pos) from None
        except KeyError as exc:
            raise self.error(f"memo slot {exc.args[0]} read before it was written", pos) from None
        except RecursionError:  # only reachable through C-level hashing of nested keys
            raise self.limit("structure nested too deeply") from None
        return count

    def index_problem(self, pos: int) -> str:
        """An IndexError means either a short argument or an empty stack: say which."""
        op = self.data[pos] if pos < len(self.data) else 0
        if pos + 1 + _ARGUMENT_BYTES.get(op, 0) > self.end:
            return "pickle ends inside an opcode argument"
        return "stack underflow"

    def pop_mark_of(self, metastack: list[list[Any]]) -> list[Any]:
        if not metastack:
            raise self.error("MARK expected but none is open", self.op_pos)
        return metastack.pop()

    def persistent_ref(self, pid: Any) -> PersistentRef:
        if not (type(pid) is tuple and pid and pid[0] == "storage"):
            # torch's weights_only unpickler loads storages only (legacy module ids included)
            self.problem(f"persistent id {_short(pid)} is not a storage, which torch refuses")
        return PersistentRef(pid)

    def reduce(self, func: Any, args: Any) -> Any:
        if type(args) is not tuple:
            raise self.error(f"REDUCE arguments are {_describe(args)}, not a tuple", self.op_pos)
        if type(func) is TrackedGlobal:
            func.uses.add(USE_CALL)
            for position, use in _ARGUMENT_USES.get(func.qualname, ()):
                self.note_argument(func, args, position, use)
            if func.hook is not None:
                return self.apply_hook(func, args)
        else:
            self.note_call(func, USE_CALL, "REDUCE")
        return Call(func, args, CALL)

    def note_argument(self, func: TrackedGlobal, args: tuple[Any, ...], position: int, use: str) -> None:
        """An allowlisted function that calls (or instantiates) one of its arguments passes
        that use on: allowlisting the argument would let torch run it."""
        if position >= len(args):
            return
        target = args[position]
        if isinstance(target, TrackedGlobal):
            target.uses.add(use)
        elif not isinstance(target, Call):
            self.problem(f"{func.qualname} given {_describe(target)} to {use}")

    def apply_hook(self, func: TrackedGlobal, args: tuple[Any, ...]) -> Any:
        hook = func.hook
        assert hook is not None
        try:
            return hook(args)
        except CkptError:
            raise
        except Exception as exc:  # arguments a file chose: any shape is possible
            raise self.error(f"malformed arguments to {func.qualname}: {type(exc).__name__}", self.op_pos) from None

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
        )

    def partial(self, exc: PickleError) -> PickleError:
        """Attach what was decoded before the failure: a scan still reports those globals."""
        exc.partial = self.snapshot(None, self.op_pos, -1)
        return exc

    def error(self, message: str, offset: int | None = None) -> PickleError:
        return PickleError(message, path=self.source, offset=offset)

    def limit(self, message: str) -> LimitError:
        return LimitError(f"limit reached: {message}", path=self.source, offset=self.op_pos)

    def problem(self, message: str, *, lossy: bool = False) -> None:
        """Something torch would refuse or only an attack produces. `lossy`: its effect is
        not kept in the graph, so the graph cannot be written back faithfully."""
        self.problems.append(f"{message} (pickle byte {self.op_pos})")
        if lossy:
            self.lossy.append(self.problems[-1])

    # -- reading arguments -------------------------------------------------------

    def take(self, pos: int, n: int) -> bytes:
        if n < 0 or pos + n > self.end:
            raise self.error(f"argument of {n} bytes runs past the end of the pickle", pos)
        return bytes(self.data[pos : pos + n])

    def line(self, pos: int) -> tuple[bytes, int]:
        limit = min(self.end, pos + self.limits.max_text_line)
        newline = self.data.find(b"\n", pos, limit)
        if newline < 0:
            raise self.error("text argument without its newline", pos)
        return bytes(self.data[pos:newline]), newline + 1

    def fixed(self, pos: int, n: int) -> int:
        if pos + n > self.end:
            raise self.error("pickle ends inside an opcode argument", pos)
        return pos + n

    # -- stack helpers -------------------------------------------------------------

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise self.error("MARK expected but none is open", self.op_pos)
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def checked_key(self, key: Any) -> Any:
        """Refuse dict keys and set members that are unhashable, or whose hashing would walk
        too much: a tuple shared through the memo can stand for 2**40 elements."""
        if isinstance(key, _PLAIN_KEY_TYPES):
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
        ref = TrackedGlobal(module, name, self.op_pos, self.hooks.reducers.get(f"{module}.{name}"))
        self.globals.append(ref)
        return ref

    def note_call(self, func: Any, use: str, opcode: str) -> None:
        if isinstance(func, TrackedGlobal):
            func.uses.add(use)
        else:
            self.problem(f"{opcode} on {_describe(func)}, a value computed inside the pickle")

    # -- opcode handlers: each takes the offset after the opcode byte and returns the next ---

    def op_stop(self, pos: int) -> int:
        self.result = self.stack.pop()
        self.stop_pos = pos
        return _STOP

    def op_pop(self, pos: int) -> int:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()
        return pos

    def op_pop_mark(self, pos: int) -> int:
        self.pop_mark()
        return pos

    def op_dup(self, pos: int) -> int:
        self.stack.append(self.stack[-1])
        return pos

    def op_proto(self, pos: int) -> int:
        new = self.fixed(pos, 1)
        self.protocol = self.data[pos]
        if self.protocol > 5:
            raise self.error(f"unsupported pickle protocol {self.protocol}", pos)
        return new

    def op_frame(self, pos: int) -> int:
        new = self.fixed(pos, 8)
        if _unpack_Q(self.data, pos)[0] > self.end - new:
            raise self.error("FRAME longer than the rest of the pickle", pos)
        return new

    # integers

    def op_long1(self, pos: int) -> int:
        new = self.fixed(pos, 1)
        raw = self.take(new, self.data[pos])
        self.stack.append(int.from_bytes(raw, "little", signed=True))
        return new + len(raw)

    def op_long4(self, pos: int) -> int:
        new = self.fixed(pos, 4)
        n = _unpack_i(self.data, pos)[0]
        if n < 0:
            raise self.error("LONG4 with a negative byte count", pos)
        if n > self.limits.max_long_bytes:
            raise self.limit(f"integer of {n} bytes")
        raw = self.take(new, n)
        self.stack.append(int.from_bytes(raw, "little", signed=True))
        return new + n

    def op_int(self, pos: int) -> int:
        text, new = self.line(pos)
        if text == b"01":
            self.stack.append(True)
        elif text == b"00":
            self.stack.append(False)
        else:
            self.stack.append(self.parse_int(text, pos))
        return new

    def op_long(self, pos: int) -> int:
        text, new = self.line(pos)
        self.stack.append(self.parse_int(text.rstrip(b"L"), pos))
        return new

    def parse_int(self, text: bytes, pos: int) -> int:
        if len(text) > 4300:  # Python's own limit on decimal conversion
            raise self.limit("decimal integer too long")
        try:
            return int(text)
        except ValueError:
            raise self.error("malformed decimal integer", pos) from None

    # floats
    def op_binfloat(self, pos: int) -> int:
        new = self.fixed(pos, 8)
        self.stack.append(_unpack_d(self.data, pos)[0])
        return new

    def op_float(self, pos: int) -> int:
        text, new = self.line(pos)
        try:
            self.stack.append(float(text))
        except ValueError:
            raise self.error("malformed FLOAT", pos) from None
        return new

    # strings and bytes
    def push_unicode(self, pos: int, n: int) -> int:
        raw = self.take(pos, n)
        try:
            self.stack.append(raw.decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError:
            raise self.error("string is not valid UTF-8", pos) from None
        return pos + n

    def op_short_binunicode(self, pos: int) -> int:
        new = self.fixed(pos, 1)
        return self.push_unicode(new, self.data[pos])

    def op_binunicode8(self, pos: int) -> int:
        new = self.fixed(pos, 8)
        return self.push_unicode(new, _unpack_Q(self.data, pos)[0])

    def op_unicode(self, pos: int) -> int:
        text, new = self.line(pos)
        try:
            self.stack.append(text.decode("raw-unicode-escape"))
        except UnicodeDecodeError:
            raise self.error("malformed UNICODE", pos) from None
        return new

    def push_py2_string(self, raw: bytes) -> None:
        # torch.load decodes Python 2 `str` as UTF-8; keep undecodable ones as bytes.
        try:
            self.stack.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            self.stack.append(raw)

    def op_short_binstring(self, pos: int) -> int:
        new = self.fixed(pos, 1)
        raw = self.take(new, self.data[pos])
        self.push_py2_string(raw)
        return new + len(raw)

    def op_binstring(self, pos: int) -> int:
        new = self.fixed(pos, 4)
        n = _unpack_i(self.data, pos)[0]
        raw = self.take(new, n)
        self.push_py2_string(raw)
        return new + n

    def op_string(self, pos: int) -> int:
        text, new = self.line(pos)
        if len(text) < 2 or text[0] != text[-1] or text[:1] not in (b"'", b'"'):
            raise self.error("STRING argument is not quoted", pos)
        try:
            raw = codecs.escape_decode(text[1:-1])[0]
        except ValueError:
            raise self.error("malformed STRING escape", pos) from None
        self.push_py2_string(raw)
        return new

    def push_bytes(self, pos: int, n: int) -> int:
        self.stack.append(self.take(pos, n))
        return pos + n

    def op_short_binbytes(self, pos: int) -> int:
        new = self.fixed(pos, 1)
        return self.push_bytes(new, self.data[pos])

    def op_binbytes(self, pos: int) -> int:
        new = self.fixed(pos, 4)
        return self.push_bytes(new, _unpack_I(self.data, pos)[0])

    def op_binbytes8(self, pos: int) -> int:
        new = self.fixed(pos, 8)
        return self.push_bytes(new, _unpack_Q(self.data, pos)[0])

    def op_bytearray8(self, pos: int) -> int:
        new = self.fixed(pos, 8)
        n = _unpack_Q(self.data, pos)[0]
        self.stack.append(bytearray(self.take(new, n)))
        return new + n

    def op_next_buffer(self, pos: int) -> int:
        self.problem("NEXT_BUFFER needs out-of-band data the file does not hold", lossy=True)
        self.stack.append(OutOfBandBuffer())
        return pos

    def op_readonly_buffer(self, pos: int) -> int:
        top = self.stack[-1]
        if isinstance(top, OutOfBandBuffer):
            top.readonly = True
        return pos

    # containers

    def op_empty_list(self, pos: int) -> int:
        self.stack.append([])
        return pos

    def op_list(self, pos: int) -> int:
        items = self.pop_mark()
        self.stack.append(items)
        return pos

    def op_dict(self, pos: int) -> int:
        items = self.pop_mark()
        if len(items) % 2:
            raise self.error("DICT with an odd number of items", self.op_pos)
        pairs = {self.checked_key(items[i]): items[i + 1] for i in range(0, len(items), 2)}
        self.stack.append(pairs)
        return pos

    def op_empty_set(self, pos: int) -> int:
        self.stack.append(set())
        return pos

    def op_frozenset(self, pos: int) -> int:
        members = frozenset(self.checked_key(i) for i in self.pop_mark())
        self.stack.append(members)
        return pos

    def op_additems(self, pos: int) -> int:
        items = self.pop_mark()
        target = self.stack[-1]
        if isinstance(target, set):
            target.update(self.checked_key(i) for i in items)
        else:
            self.problem(f"ADDITEMS on {_describe(target)}, which is not a set", lossy=True)
        return pos

    def op_append(self, pos: int) -> int:
        item = self.stack.pop()
        self.append_items(self.stack[-1], [item], "APPEND")
        return pos

    def op_appends(self, pos: int) -> int:
        items = self.pop_mark()
        self.append_items(self.stack[-1], items, "APPENDS")
        return pos

    def append_items(self, target: Any, items: list[Any], opcode: str) -> None:
        if type(target) is list:
            target.extend(items)
            return
        if not isinstance(target, Call) or target.kind != NEWOBJ:
            self.problem(f"{opcode} on {_describe(target)}, which torch refuses", lossy=not isinstance(target, Call))
        if isinstance(target, Call):
            target.items = (target.items or []) + items

    def op_setitem(self, pos: int) -> int:
        value = self.stack.pop()
        key = self.stack.pop()
        self.set_items(self.stack[-1], [key, value], "SETITEM")
        return pos

    def set_items(self, target: Any, items: list[Any], opcode: str) -> None:
        if isinstance(target, dict):  # a plain dict, or one a reader hook built
            for i in range(0, len(items), 2):
                target[self.checked_key(items[i])] = items[i + 1]
            return
        if not (isinstance(target, Call) and target.func_name in _DICT_LIKE_GLOBALS):
            # GHSA-63cw-57p8-fm3p: SETITEM on other objects calls their __setitem__.
            self.problem(f"{opcode} on {_describe(target)}, which torch refuses", lossy=not isinstance(target, Call))
        if isinstance(target, Call):
            pairs = [(self.checked_key(items[i]), items[i + 1]) for i in range(0, len(items), 2)]
            target.dictitems = (target.dictitems or []) + pairs

    # memo

    def op_put(self, pos: int) -> int:
        text, new = self.line(pos)
        self.memo_put(self.parse_int(text, pos), self.stack[-1])
        return new

    def op_memoize(self, pos: int) -> int:
        self.memo_put(len(self.memo), self.stack[-1])
        return pos

    def op_get(self, pos: int) -> int:
        text, new = self.line(pos)
        self.stack.append(self.memo_get(self.parse_int(text, pos)))
        return new

    # globals, calls and objects: the places an ordinary unpickler runs code
    def read_global_name(self, pos: int) -> tuple[str, str, int]:
        module, pos = self.line(pos)
        name, pos = self.line(pos)
        try:
            return module.decode("utf-8"), name.decode("utf-8"), pos
        except UnicodeDecodeError:
            raise self.error("global name is not valid UTF-8", self.op_pos) from None

    def op_global(self, pos: int) -> int:
        module, name, new = self.read_global_name(pos)
        self.stack.append(self.make_global(module, name))
        return new

    def op_stack_global(self, pos: int) -> int:
        name = self.stack.pop()
        module = self.stack.pop()
        if type(module) is not str or type(name) is not str:
            raise self.error(
                f"STACK_GLOBAL on {_describe(module)} and {_describe(name)}: a name "
                "computed at load time, which cannot be resolved statically",
                self.op_pos,
            )
        self.stack.append(self.make_global(module, name))
        return pos

    def op_newobj(self, pos: int) -> int:
        args = self.stack.pop()
        cls = self.stack[-1]
        if type(args) is not tuple:
            raise self.error(f"NEWOBJ arguments are {_describe(args)}, not a tuple", self.op_pos)
        self.note_call(cls, USE_INSTANTIATE, "NEWOBJ")
        self.stack[-1] = Call(cls, args, NEWOBJ)
        return pos

    def op_newobj_ex(self, pos: int) -> int:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack[-1]
        if type(args) is not tuple or type(kwargs) is not dict:
            raise self.error("NEWOBJ_EX needs a tuple and a dict", self.op_pos)
        self.note_call(cls, USE_INSTANTIATE, "NEWOBJ_EX")
        call = Call(cls, args, NEWOBJ)
        call.kwargs = kwargs
        self.stack[-1] = call
        return pos

    def op_inst(self, pos: int) -> int:
        module, name, new = self.read_global_name(pos)
        cls = self.make_global(module, name)
        args = tuple(self.pop_mark())
        self.note_call(cls, USE_CALL, "INST")
        self.stack.append(Call(cls, args, INST))
        return new

    def op_obj(self, pos: int) -> int:
        items = self.pop_mark()
        if not items:
            raise self.error("OBJ without a class", self.op_pos)
        self.note_call(items[0], USE_CALL, "OBJ")
        self.stack.append(Call(items[0], tuple(items[1:]), INST))
        return pos

    def op_build(self, pos: int) -> int:
        state = self.stack.pop()
        target = self.stack[-1]
        if self.hooks.build is not None and self.hooks.build(target, state):
            return pos
        if not isinstance(target, Call):
            self.problem(f"BUILD on {_describe(target)}: sets attributes of an existing object", lossy=True)
        elif target.state is not UNSET:
            self.problem(f"BUILD applied twice to {_describe(target)}", lossy=True)
        else:
            target.state = state
            if isinstance(target.func, TrackedGlobal):
                target.func.uses.add(USE_BUILD)
        return pos

    def op_persid(self, pos: int) -> int:
        text, new = self.line(pos)
        try:
            self.stack.append(self.persistent_ref(text.decode("ascii")))
        except UnicodeDecodeError:
            raise self.error("persistent id is not ASCII", pos) from None
        return new

    def op_ext(self, size: int) -> Callable[[int], int]:
        def handler(pos: int) -> int:
            new = self.fixed(pos, size)
            code = int.from_bytes(self.data[pos:new], "little")
            self.problem(f"extension code {code}: resolved through the copyreg registry", lossy=True)
            self.stack.append(Extension(code))
            return new

        return handler

    # -- dispatch ---------------------------------------------------------------------

    def _build_dispatch(self) -> list[Callable[[int], int] | None]:
        """Handlers for the opcodes the loop does not handle inline."""
        table: list[Callable[[int], int] | None] = [None] * 256
        handlers: dict[str, Callable[[int], int]] = {
            name: getattr(self, "op_" + name.lower()) for name in NAMES.values() if hasattr(self, "op_" + name.lower())
        }
        handlers["EXT1"], handlers["EXT2"], handlers["EXT4"] = (
            self.op_ext(1),
            self.op_ext(2),
            self.op_ext(4),
        )
        for code, name in NAMES.items():
            if name in INLINE:
                continue
            handler = handlers[name]
            table[code] = handler if name in TORCH_OPCODES else self._foreign(name, handler)
        return table

    def _foreign(self, name: str, handler: Callable[[int], int]) -> Callable[[int], int]:
        """Wrap an opcode torch's weights_only unpickler refuses, to record its first use."""

        def recorded(pos: int) -> int:
            self.foreign.setdefault(name, pos - 1)
            return handler(pos)

        return recorded


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(value: Any) -> str:
    if isinstance(value, PersistentRef):
        kind = value.pid[0] if isinstance(value.pid, tuple) and value.pid else value.pid
        return f"a value loaded by persistent id {kind!r}"
    if isinstance(value, Global):
        return f"global {value.qualname}"
    if isinstance(value, Call):
        name = value.func_name or "a computed callable"
        return f"the result of {name}(...)"
    return f"a {type(value).__name__}"
