"""Pickle opcode names, and the subset torch's `weights_only` unpickler accepts."""

from __future__ import annotations

import pickletools

# Every opcode of protocols 0-5, by byte value (pickletools is a table, not a loader).
NAMES: dict[int, str] = {ord(op.code): op.name for op in pickletools.opcodes}

# What `torch/_weights_only_unpickler.py` decodes; anything else makes it refuse the file.
TORCH_OPCODES: frozenset[str] = frozenset(
    {
        "PROTO", "STOP", "GLOBAL", "NEWOBJ", "REDUCE", "BUILD",
        "APPEND", "APPENDS", "SETITEM", "SETITEMS", "MARK",
        "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWTRUE", "NEWFALSE",
        "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET",
        "BININT", "BININT1", "BININT2", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING",
        "LONG1", "BINPERSID", "BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT",
    }
)  # fmt: skip

# Opcodes the machine's loop handles inline: every opcode torch's own pickles use often.
INLINE: frozenset[str] = frozenset(
    {
        "BINPUT", "BINGET", "LONG_BINPUT", "LONG_BINGET", "BINUNICODE", "BININT1", "BININT2",
        "BININT", "MARK", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "REDUCE", "BINPERSID",
        "NEWFALSE", "NEWTRUE", "EMPTY_TUPLE", "NONE", "SETITEMS", "EMPTY_DICT",
    }
)  # fmt: skip

# Bytes of argument (or of its length prefix) after each opcode, to tell a truncated
# argument from an empty stack.
_PREFIX_BYTES = {
    pickletools.UP_TO_NEWLINE: 0,
    pickletools.TAKEN_FROM_ARGUMENT1: 1,
    pickletools.TAKEN_FROM_ARGUMENT4: 4,
    pickletools.TAKEN_FROM_ARGUMENT4U: 4,
    pickletools.TAKEN_FROM_ARGUMENT8U: 8,
}
ARGUMENT_BYTES: dict[int, int] = {
    ord(op.code): (op.arg.n if op.arg.n >= 0 else _PREFIX_BYTES[op.arg.n]) if op.arg else 0
    for op in pickletools.opcodes
}
