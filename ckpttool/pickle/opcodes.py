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
