"""Pickles built opcode by opcode for unit verdicts of the judge: a global, a call, an
object, plain values, and the judgement of a pickle ckpttool alone decodes."""

from __future__ import annotations

import struct

from ckpttool.pickle import decode
from ckpttool.pickle.judge import Judgement, judge


def glob(qualname: str) -> bytes:
    module, _, name = qualname.rpartition(".")
    return f"c{module}\n{name}\n".encode()


def text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def num(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def call(func: str, *args: bytes) -> bytes:
    """REDUCE: func(*args)."""
    return glob(func) + b"(" + b"".join(args) + b"tR"


def new(cls: str, *args: bytes) -> bytes:
    """NEWOBJ: cls.__new__(cls, *args)."""
    return glob(cls) + b"(" + b"".join(args) + b"t\x81"


def judged(body: bytes, allow: dict[str, str] | None = None, protocol: int = 2) -> Judgement:
    return judge([decode(bytes([0x80, protocol]) + body + b".")], allow)


def verdict_of(judgement: Judgement, qualname: str) -> str:
    (found,) = [g for g in judgement.globals if g.qualname == qualname]
    return found.verdict
