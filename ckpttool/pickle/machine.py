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

import struct
from collections.abc import Callable
from typing import Any

from ckpttool.errors import PickleError
from ckpttool.gcpause import gc_paused
from ckpttool.pickle.call_ops import ARGUMENT_USES, CallOpcodes
from ckpttool.pickle.container_ops import ContainerOpcodes
from ckpttool.pickle.framing import buffered_stream
from ckpttool.pickle.objects import CALL, Call, PersistentRef
from ckpttool.pickle.opcodes import ARGUMENT_BYTES as _ARGUMENT_BYTES
from ckpttool.pickle.opcodes import INLINE, NAMES, TORCH_OPCODES
from ckpttool.pickle.scalar_ops import ScalarOpcodes
from ckpttool.pickle.state import (
    DEFAULT_LIMITS,
    NO_HOOKS,
    USE_BUILD,
    USE_CALL,
    USE_INSTANTIATE,
    USE_REFERENCE,
    Decoded,
    Hooks,
    Limits,
    TrackedGlobal,
    unpack_i32,
    unpack_u16,
    unpack_u32,
    unpack_u64,
)

__all__ = [
    "DEFAULT_LIMITS",
    "NO_HOOKS",
    "USE_BUILD",
    "USE_CALL",
    "USE_INSTANTIATE",
    "USE_REFERENCE",
    "Decoded",
    "Hooks",
    "Limits",
    "TrackedGlobal",
    "decode",
]


def decode(
    data: bytes | Any,
    *,
    start: int = 0,
    end: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    source: str | None = None,
    hooks: Hooks = NO_HOOKS,
    stream_end: int = 0,
) -> Decoded:
    """Decode the pickle starting at `data[start]` (bytes or an mmap) without executing it.
    `stream_end`: where the stream a reader unpickles goes on to past `end` (a window of a
    file larger than the size limit): running out of bytes before it is a `LimitError`."""
    end = len(data) if end is None else end
    return _Machine(data, start, end, limits, source, hooks, stream_end).run()


class _Machine(ScalarOpcodes, ContainerOpcodes, CallOpcodes):
    def __init__(
        self, data: Any, start: int, end: int, limits: Limits, source: str | None, hooks: Hooks, stream_end: int
    ) -> None:
        super().__init__(data, start, end, limits, source, hooks, stream_end)
        self.dispatch = self._build_dispatch()

    # -- the loop ---------------------------------------------------------------

    def run(self) -> Decoded:
        # The graph is built of new containers and records that hold one another: the
        # collector would walk it again and again while it grows, and it frees nothing
        # (every object is reachable from the stack or the memo).
        with gc_paused():
            try:
                return self.decoded()
            finally:
                # the handlers are bound to the machine: dropped, refcounting frees the
                # machine (its memo, its mapping) now instead of a later collection
                self.dispatch = []

    def decoded(self) -> Decoded:
        try:
            count = self.loop()
            self.check_last_frame()
        except PickleError as exc:
            # A framed pickle that fails may fail only under this reading (a line cut by a
            # frame's end): what a file-object reader meets is reported all the same.
            self.add_buffered_reading(always="FRAME" in self.foreign)
            raise self.partial(exc) from None
        self.add_buffered_reading()
        return self.snapshot(self.result, self.stop_pos, count)

    # -- frames -------------------------------------------------------------------------

    def enter_frame(self, pos: int) -> int:
        """FRAME at `pos - 1`: returns the offset after its header; `frame_end` is set."""
        new = self.fixed(pos, 8)
        length: int = unpack_u64(self.data, pos)[0]
        if self.frame_end is not None:
            self.note_framing(f"FRAME at byte {pos - 1} inside the frame that ends at byte {self.frame_end}")
        if length > self.end - new:
            # the C unpickler stops here; the pure-Python one reads on with what there is
            self.note_framing(f"FRAME of {length} bytes, longer than the {self.end - new} left")
            length = self.end - new
        self.frame_end = new + length
        return new

    def leave_frame(self, pos: int) -> int:
        """The loop reached the end of its window: the end of a frame, or of the pickle.
        Returns the new window's end."""
        frame_end = self.frame_end
        if frame_end is None or pos >= self.end:
            raise self.past_end("pickle ends before its STOP opcode (truncated?)", pos, pos + 1)
        if pos > frame_end:
            self.note_framing(f"an opcode runs across the end of the frame at byte {frame_end}")
        self.frame_end = None
        return self.end

    def check_last_frame(self) -> None:
        if self.frame_end is not None and self.frame_end != self.stop_pos:
            self.note_framing(f"the last frame runs {self.frame_end - self.stop_pos} bytes past STOP")

    def note_framing(self, message: str) -> None:
        self.irregular_framing = True
        self.differential(f"{message}; pickle.loads and pickle.Unpickler(file) read different opcodes")

    def add_buffered_reading(self, always: bool = False) -> None:
        """After irregular framing, also decode what a file-object reader sees (torch.load's
        way of reading data.pkl) and report the globals it meets."""
        if not (self.irregular_framing or always):
            return
        stream = buffered_stream(self.data, self.start, self.end)
        try:
            other = decode(stream, limits=self.limits, source=self.source)
        except PickleError as exc:
            if exc.partial is None:
                return
            other = exc.partial
        self.globals.extend(other.globals)
        self.calls.extend(other.calls)
        self.problems.extend(f"read through a file object: {p}" for p in other.problems)

    def loop(self) -> int:
        """The opcode loop. Opcodes of torch's own pickles are handled inline, the most
        frequent first (they are nearly every opcode of a large checkpoint); the rest go
        through `dispatch`. `op_pos` is set only where a handler or an error reads it."""
        data, end, dispatch, memo, metastack = self.data, self.end, self.dispatch, self.memo, self.metastack
        max_ops, max_marks, max_memo = self.limits.max_opcodes, self.limits.max_mark_depth, self.limits.max_memo
        record, passes_on, u32 = self.calls.append, ARGUMENT_USES, unpack_u32
        stack = self.stack
        pos = self.start
        window = end  # the end of the current frame, or of the pickle
        try:
            # the opcode limit is the range's end: no count to compare per opcode
            for count in range(1, max_ops + 1):
                if pos >= window:
                    self.op_pos = pos
                    window = self.leave_frame(pos)
                op = data[pos]
                if op == 0x72:  # LONG_BINPUT
                    index = u32(data, pos + 1)[0]
                    if len(memo) >= max_memo and index not in memo:
                        self.op_pos = pos
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
                elif op == 0x28:  # MARK
                    if len(metastack) >= max_marks:
                        self.op_pos = pos
                        raise self.limit(f"more than {max_marks} nested MARKs")
                    metastack.append(stack)
                    stack = []
                    pos += 1
                elif op == 0x58:  # BINUNICODE
                    n = u32(data, pos + 1)[0]
                    pos += 5
                    if pos + n > end:
                        raise self.past_end(f"argument of {n} bytes runs past the end of the pickle", pos, pos + n)
                    try:
                        stack.append(str(data[pos : pos + n], "utf-8", "surrogatepass"))
                    except UnicodeDecodeError:
                        raise self.error("string is not valid UTF-8", pos) from None
                    pos += n
                elif op == 0x74:  # TUPLE
                    if not metastack:
                        raise self.error("MARK expected but none is open", pos)
                    items = tuple(stack)
                    stack = metastack.pop()
                    stack.append(items)
                    pos += 1
                elif op == 0x86:  # TUPLE2
                    second = stack.pop()
                    stack[-1] = (stack[-1], second)
                    pos += 1
                elif op == 0x52:  # REDUCE
                    args = stack.pop()
                    func = stack[-1]
                    if type(func) is TrackedGlobal and type(args) is tuple and func.qualname not in passes_on:
                        # `reduce`'s bookkeeping, inline, for a global that passes no argument on
                        func.uses.add(USE_CALL)
                        stack[-1] = call = Call(func, args, CALL)
                        record(call)
                    else:
                        self.op_pos = pos
                        stack[-1] = self.reduce(func, args)
                    pos += 1
                elif op == 0x51:  # BINPERSID
                    pid = stack[-1]
                    if type(pid) is tuple and pid and pid[0] == "storage":
                        stack[-1] = PersistentRef(pid)  # what `persistent_ref` returns for a storage
                    else:
                        self.op_pos = pos
                        stack[-1] = self.persistent_ref(pid)
                    pos += 1
                elif op == 0x89:  # NEWFALSE
                    stack.append(False)
                    pos += 1
                elif op == 0x29:  # EMPTY_TUPLE
                    stack.append(())
                    pos += 1
                elif op == 0x6A:  # LONG_BINGET
                    stack.append(memo[u32(data, pos + 1)[0]])
                    pos += 5
                elif op == 0x85:  # TUPLE1
                    stack[-1] = (stack[-1],)
                    pos += 1
                elif op == 0x87:  # TUPLE3
                    third, second = stack.pop(), stack.pop()
                    stack[-1] = (stack[-1], second, third)
                    pos += 1
                elif op == 0x88:  # NEWTRUE
                    stack.append(True)
                    pos += 1
                elif op == 0x4E:  # NONE
                    stack.append(None)
                    pos += 1
                elif op == 0x4D:  # BININT2
                    stack.append(unpack_u16(data, pos + 1)[0])
                    pos += 3
                elif op == 0x4A:  # BININT
                    stack.append(unpack_i32(data, pos + 1)[0])
                    pos += 5
                elif op == 0x75:  # SETITEMS
                    self.op_pos = pos
                    if not metastack:
                        raise self.error("MARK expected but none is open", pos)
                    pairs = stack
                    stack = metastack.pop()
                    if len(pairs) % 2:
                        raise self.error("SETITEMS with an odd number of items", pos)
                    self.set_items(stack[-1], pairs, "SETITEMS")
                    pos += 1
                elif op == 0x7D:  # EMPTY_DICT
                    stack.append({})
                    pos += 1
                elif op == 0x95:  # FRAME
                    self.op_pos = pos
                    self.foreign.setdefault("FRAME", pos)
                    pos = self.enter_frame(pos + 1)
                    window = self.frame_end or pos
                else:
                    handler = dispatch[op]
                    if handler is None:
                        raise self.error(f"invalid opcode 0x{op:02x}", pos)
                    self.op_pos = pos
                    self.stack = stack
                    pos = handler(pos + 1)
                    stack = self.stack
                    if pos < 0:  # STOP
                        return count
            self.op_pos = pos
            if pos >= window:
                self.leave_frame(pos)  # a pickle that ends here is truncated first
            raise self.limit(f"more than {max_ops} opcodes")
        except (IndexError, struct.error):
            self.op_pos = pos
            raise self.past_end(self.index_problem(pos), pos, self.argument_end(pos)) from None
        except KeyError as exc:
            self.op_pos = pos
            raise self.error(f"memo slot {exc.args[0]} read before it was written", pos) from None
        except RecursionError:  # only reachable through C-level hashing of nested keys
            raise self.limit("structure nested too deeply") from None

    def index_problem(self, pos: int) -> str:
        """An IndexError means either a short argument or an empty stack: say which."""
        if self.argument_end(pos) > self.end:
            return "pickle ends inside an opcode argument"
        return "stack underflow"

    def argument_end(self, pos: int) -> int:
        op = self.data[pos] if pos < len(self.data) else 0
        return pos + 1 + _ARGUMENT_BYTES.get(op, 0)

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
