"""Opcode handlers for control and plain values: STOP, POP, PROTO, FRAME, numbers,
strings and bytes. Each takes the offset after its opcode byte and returns the next."""

from __future__ import annotations

import codecs
import re

from ckpttool.pickle.objects import OutOfBandBuffer
from ckpttool.pickle.state import MachineState, unpack_f64, unpack_i32, unpack_u32, unpack_u64

_STOP = -1
# What C's strtol(text, &end, 0) reads whole: optional space and sign, then hex, octal or decimal.
_C_INTEGER = re.compile(rb"[ \t\n\v\f\r]*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_C_LONG_MAX = (1 << 63) - 1


def _strtol(text: bytes) -> int | None:
    """The value strtol gives when it reads all of `text` and does not overflow, else None."""
    match = _C_INTEGER.fullmatch(text)
    if match is None:
        return None
    digits = match.group(1)
    base = 16 if digits[1:2] in (b"x", b"X") else 8 if digits.startswith(b"0") else 10
    value = int(digits[2:] if base == 16 else digits, base)
    value = -value if b"-" in text[: match.start(1)] else value
    return value if -_C_LONG_MAX - 1 <= value <= _C_LONG_MAX else None


class ScalarOpcodes(MachineState):
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
        if self.op_pos != self.start:
            # It changes how later GLOBALs are resolved (Python 2 names below protocol 3)
            # midway; a scanner that takes the protocol from the header reads them otherwise.
            self.differential(f"PROTO {self.data[pos]} after the pickle's first opcode")
        self.protocol = self.data[pos]
        if self.protocol > 5:
            raise self.error(f"unsupported pickle protocol {self.protocol}", pos)
        return new

    # integers

    def op_long1(self, pos: int) -> int:
        new = self.fixed(pos, 1)
        raw = self.take(new, self.data[pos])
        self.stack.append(int.from_bytes(raw, "little", signed=True))
        return new + len(raw)

    def op_long4(self, pos: int) -> int:
        new = self.fixed(pos, 4)
        n: int = unpack_i32(self.data, pos)[0]
        if n < 0:
            raise self.error("LONG4 with a negative byte count", pos)
        if n > self.limits.max_long_bytes:
            raise self.limit(f"integer of {n} bytes")
        raw = self.take(new, n)
        self.stack.append(int.from_bytes(raw, "little", signed=True))
        return new + n

    def op_int(self, pos: int) -> int:
        text, new = self.line(pos)
        digits = self.c_string(text)
        # strtol reads nothing from an empty C string and stops at its end: 0, accepted
        value = self.parse_literal(digits, pos, c_long=True) if digits or digits == text else 0
        # CPython: a two-character literal that reads as 0 or 1 is a bool ("00", "01", " 1")
        self.stack.append(bool(value) if len(text) == 2 and value in (0, 1) else value)
        return new

    def op_long(self, pos: int) -> int:
        text, new = self.line(pos)
        text = self.c_string(text[:-1] if text.endswith(b"L") else text)
        self.stack.append(self.parse_literal(text, pos))
        return new

    def parse_literal(self, text: bytes, pos: int, *, c_long: bool = False) -> int:
        """INT and LONG as CPython 3.11 reads them (base 0, so "0x10" is 16, and for INT,
        read by C's strtol first, "010" is 8). Newer versions read base 10: a literal the
        two read differently is a differential."""
        if len(text) > 4300:  # Python's own limit on decimal conversion
            raise self.limit("decimal integer too long")
        value = _strtol(text) if c_long else None
        if value is None:
            try:
                value = int(text, 0)
            except ValueError:
                value = None
        try:
            decimal: int | None = int(text)
        except ValueError:
            decimal = None
        if value is None or decimal != value:
            self.differential(f"integer literal {text[:20]!r} reads differently across Python versions")
        if value is None:
            if decimal is None:
                raise self.error("malformed decimal integer", pos)
            return decimal
        return value

    # floats

    def op_binfloat(self, pos: int) -> int:
        new = self.fixed(pos, 8)
        self.stack.append(unpack_f64(self.data, pos)[0])
        return new

    def op_float(self, pos: int) -> int:
        text, new = self.line(pos)
        try:
            self.stack.append(float(self.c_string(text)))
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
        return self.push_unicode(new, unpack_u64(self.data, pos)[0])

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
        n: int = unpack_i32(self.data, pos)[0]
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
        return self.push_bytes(new, unpack_u32(self.data, pos)[0])

    def op_binbytes8(self, pos: int) -> int:
        new = self.fixed(pos, 8)
        return self.push_bytes(new, unpack_u64(self.data, pos)[0])

    def op_bytearray8(self, pos: int) -> int:
        new = self.fixed(pos, 8)
        n: int = unpack_u64(self.data, pos)[0]
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
