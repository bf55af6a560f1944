"""Pickle opcodes (protocols 0-5), and the subset torch's `weights_only` unpickler accepts.

The table is `pickletools.opcodes` written out, so that reading a checkpoint does not
import pickletools; a test checks it against pickletools itself.
"""

from __future__ import annotations

# byte value: (name, bytes of argument, or of the argument's length prefix)
_OPCODES: dict[int, tuple[str, int]] = {
    0x28: ("MARK", 0),
    0x29: ("EMPTY_TUPLE", 0),
    0x2E: ("STOP", 0),
    0x30: ("POP", 0),
    0x31: ("POP_MARK", 0),
    0x32: ("DUP", 0),
    0x42: ("BINBYTES", 4),
    0x43: ("SHORT_BINBYTES", 1),
    0x46: ("FLOAT", 0),
    0x47: ("BINFLOAT", 8),
    0x49: ("INT", 0),
    0x4A: ("BININT", 4),
    0x4B: ("BININT1", 1),
    0x4C: ("LONG", 0),
    0x4D: ("BININT2", 2),
    0x4E: ("NONE", 0),
    0x50: ("PERSID", 0),
    0x51: ("BINPERSID", 0),
    0x52: ("REDUCE", 0),
    0x53: ("STRING", 0),
    0x54: ("BINSTRING", 4),
    0x55: ("SHORT_BINSTRING", 1),
    0x56: ("UNICODE", 0),
    0x58: ("BINUNICODE", 4),
    0x5D: ("EMPTY_LIST", 0),
    0x61: ("APPEND", 0),
    0x62: ("BUILD", 0),
    0x63: ("GLOBAL", 0),
    0x64: ("DICT", 0),
    0x65: ("APPENDS", 0),
    0x67: ("GET", 0),
    0x68: ("BINGET", 1),
    0x69: ("INST", 0),
    0x6A: ("LONG_BINGET", 4),
    0x6C: ("LIST", 0),
    0x6F: ("OBJ", 0),
    0x70: ("PUT", 0),
    0x71: ("BINPUT", 1),
    0x72: ("LONG_BINPUT", 4),
    0x73: ("SETITEM", 0),
    0x74: ("TUPLE", 0),
    0x75: ("SETITEMS", 0),
    0x7D: ("EMPTY_DICT", 0),
    0x80: ("PROTO", 1),
    0x81: ("NEWOBJ", 0),
    0x82: ("EXT1", 1),
    0x83: ("EXT2", 2),
    0x84: ("EXT4", 4),
    0x85: ("TUPLE1", 0),
    0x86: ("TUPLE2", 0),
    0x87: ("TUPLE3", 0),
    0x88: ("NEWTRUE", 0),
    0x89: ("NEWFALSE", 0),
    0x8A: ("LONG1", 1),
    0x8B: ("LONG4", 4),
    0x8C: ("SHORT_BINUNICODE", 1),
    0x8D: ("BINUNICODE8", 8),
    0x8E: ("BINBYTES8", 8),
    0x8F: ("EMPTY_SET", 0),
    0x90: ("ADDITEMS", 0),
    0x91: ("FROZENSET", 0),
    0x92: ("NEWOBJ_EX", 0),
    0x93: ("STACK_GLOBAL", 0),
    0x94: ("MEMOIZE", 0),
    0x95: ("FRAME", 8),
    0x96: ("BYTEARRAY8", 8),
    0x97: ("NEXT_BUFFER", 0),
    0x98: ("READONLY_BUFFER", 0),
}

NAMES: dict[int, str] = {code: name for code, (name, _) in _OPCODES.items()}

# Bytes of argument (or of its length prefix) after each opcode, to tell a truncated
# argument from an empty stack.
ARGUMENT_BYTES: dict[int, int] = {code: size for code, (_, size) in _OPCODES.items()}

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
        "NEWFALSE", "NEWTRUE", "EMPTY_TUPLE", "NONE", "SETITEMS", "EMPTY_DICT", "FRAME",
    }
)  # fmt: skip
