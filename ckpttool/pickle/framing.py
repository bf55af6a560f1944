"""FRAME, and how CPython's C unpickler reads a pickle through a file object.

A FRAME opcode (protocol 4+) announces that the next N bytes hold whole opcodes. The
pickler only ever writes frames that do: every opcode lies entirely inside one frame or
outside all of them. Readers differ on any other layout:

- `pickle.loads(bytes)` treats FRAME as a hint and reads straight on across its end;
- `pickle.Unpickler(file)` with a file object without `peek` (`io.BytesIO`, which is how
  `torch.load` feeds it `data.pkl`) copies the frame into a buffer, and an opcode whose
  argument does not fit in what is left of the buffer silently drops that rest and reads
  the argument from the bytes after the frame; a nested FRAME that does not fit replaces
  the buffer the same way; and the bytes a frame covers past STOP are consumed, so the
  next pickle of a stream starts after the frame, not after STOP;
- a buffered file (`open(path, 'rb')`, with `peek`) does one or the other depending on
  the frame's size and the file's buffer;
- the pure-Python `pickle._Unpickler` refuses both.

The machine decodes as `pickle.loads` does and reports any such layout as a problem.
`buffered_stream` gives the bytes the opcodes see under the second reading (frames
removed), so that a scan also names every global that reading would import.
"""

from __future__ import annotations

import struct
from typing import Any

from ckpttool.pickle.opcodes import NAMES

_FRAME = 0x95
_STOP = 0x2E

# opcode -> bytes of its fixed-size argument
_FIXED: dict[int, int] = {
    0x80: 1,  # PROTO
    0x4A: 4,  # BININT
    0x4B: 1,  # BININT1
    0x4D: 2,  # BININT2
    0x47: 8,  # BINFLOAT
    0x68: 1,  # BINGET
    0x6A: 4,  # LONG_BINGET
    0x71: 1,  # BINPUT
    0x72: 4,  # LONG_BINPUT
    0x82: 1,  # EXT1
    0x83: 2,  # EXT2
    0x84: 4,  # EXT4
}

# opcode -> (bytes of the length prefix, length is signed, data read with readinto)
# The C unpickler reads bytes objects with readinto, which takes what is left of the
# buffer and then the rest from the file; every other read needs to fit in the buffer.
_COUNTED: dict[int, tuple[int, bool, bool]] = {
    0x8A: (1, False, False),  # LONG1
    0x8B: (4, True, False),  # LONG4
    0x54: (4, False, False),  # BINSTRING
    0x55: (1, False, False),  # SHORT_BINSTRING
    0x58: (4, False, False),  # BINUNICODE
    0x8C: (1, False, False),  # SHORT_BINUNICODE
    0x8D: (8, False, False),  # BINUNICODE8
    0x42: (4, False, True),  # BINBYTES
    0x43: (1, False, True),  # SHORT_BINBYTES
    0x8E: (8, False, True),  # BINBYTES8
    0x96: (8, False, True),  # BYTEARRAY8
}

# opcode -> number of newline-terminated text arguments
_LINES: dict[int, int] = {
    0x49: 1,  # INT
    0x4C: 1,  # LONG
    0x46: 1,  # FLOAT
    0x53: 1,  # STRING
    0x56: 1,  # UNICODE
    0x70: 1,  # PUT
    0x67: 1,  # GET
    0x50: 1,  # PERSID
    0x63: 2,  # GLOBAL
    0x69: 2,  # INST
}


class _Exhausted(Exception):
    """The reader would fail here ("pickle data was truncated")."""


class _BufferedFile:
    """The C unpickler's input buffer over a file object without `peek`.

    Outside frames every read takes exactly the bytes it needs from the file, so the
    buffer is always used up; FRAME fills it with the frame's bytes.
    """

    def __init__(self, data: Any, start: int, end: int) -> None:
        self.data, self.end = data, end
        self.file_pos = start
        self.buf_pos = self.buf_end = start

    def read(self, n: int) -> bytes:
        if self.buf_end - self.buf_pos >= n:
            self.buf_pos += n
            return bytes(self.data[self.buf_pos - n : self.buf_pos])
        return self._from_file(n)  # what was left of the buffer is dropped

    def _from_file(self, n: int) -> bytes:
        if n < 0 or self.file_pos + n > self.end:
            raise _Exhausted
        self.file_pos += n
        self.buf_pos = self.buf_end = self.file_pos
        return bytes(self.data[self.file_pos - n : self.file_pos])

    def read_into(self, n: int) -> bytes:
        held = min(n, self.buf_end - self.buf_pos)
        first = bytes(self.data[self.buf_pos : self.buf_pos + held])
        self.buf_pos += held
        return first + self._from_file(n - held) if n > held else first

    def readline(self) -> bytes:
        newline = self.data.find(b"\n", self.buf_pos, self.buf_end)
        if newline >= 0:
            line = bytes(self.data[self.buf_pos : newline + 1])
            self.buf_pos = newline + 1
            return line
        newline = self.data.find(b"\n", self.file_pos, self.end)
        if newline < 0:
            raise _Exhausted
        return self._from_file(newline + 1 - self.file_pos)

    def frame(self, n: int) -> None:
        if self.buf_end - self.buf_pos >= n:
            return  # the bytes are already buffered: the C reader just checks they are there
        if self.file_pos + n > self.end:
            raise _Exhausted
        self.buf_pos, self.buf_end = self.file_pos, self.file_pos + n
        self.file_pos += n


def buffered_stream(data: Any, start: int, end: int) -> bytes:
    """The opcodes `pickle.Unpickler(io.BytesIO(data[start:end])).load()` reads, in order,
    with their arguments as it sees them and FRAMEs left out: a pickle the machine can
    decode to meet what that reading would meet. Stops where that reading would fail."""
    f = _BufferedFile(data, start, end)
    out = bytearray()
    try:
        while True:
            op = f.read(1)
            code = op[0]
            if code == _FRAME:
                f.frame(struct.unpack("<Q", f.read(8))[0])
                continue
            out += op
            if code == _STOP or code not in NAMES:
                return bytes(out)
            out += _arguments(f, code)
    except _Exhausted:
        return bytes(out)


def _arguments(f: _BufferedFile, code: int) -> bytes:
    if code in _FIXED:
        return f.read(_FIXED[code])
    if code in _COUNTED:
        width, signed, into = _COUNTED[code]
        prefix = f.read(width)
        n = int.from_bytes(prefix, "little", signed=signed)
        if n < 0:
            raise _Exhausted
        return prefix + (f.read_into(n) if into else f.read(n))
    lines = _LINES.get(code, 0)
    return b"".join(f.readline() for _ in range(lines))
