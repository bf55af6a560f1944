"""Opcode handlers for control and plain values: STOP, POP, PROTO, FRAME, numbers,
strings and bytes. Each takes the offset after its opcode byte and returns the next."""

from __future__ import annotations

import codecs

from ckpttool.pickle.objects import OutOfBandBuffer
from ckpttool.pickle.state import MachineState, unpack_f64, unpack_i32, unpack_u32, unpack_u64

_STOP = -1


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
        self.protocol = self.data[pos]
        if self.protocol > 5:
            raise self.error(f"unsupported pickle protocol {self.protocol}", pos)
        return new

    def op_frame(self, pos: int) -> int:
        new = self.fixed(pos, 8)
        if unpack_u64(self.data, pos)[0] > self.end - new:
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
        n = unpack_i32(self.data, pos)[0]
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

    # floats

    def op_binfloat(self, pos: int) -> int:
        new = self.fixed(pos, 8)
        self.stack.append(unpack_f64(self.data, pos)[0])
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
        n = unpack_i32(self.data, pos)[0]
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
        n = unpack_u64(self.data, pos)[0]
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
