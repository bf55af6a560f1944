"""Hostile and broken checkpoint inputs, built byte by byte.

Every pickle here is written opcode by opcode, so each test says exactly which
instruction stream it feeds the reader; `pickle.dumps` is used only where a test
wants CPython's own encoding of a protocol (and then only on plain data or on an
object whose `__reduce__` names a payload: the pickler records the name, it never
calls it). Containers are written by hand too: zip archives with `struct` (so local
and central headers can disagree), torch's legacy stacked files, safetensors.

Every payload targets a marker file the test owns: if anything ever ran, the only
effect would be that file appearing, and each test asserts it did not.
"""

from __future__ import annotations

import io
import shlex
import struct
import tarfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# -- opcodes -----------------------------------------------------------------------------


class Op:
    """Pickle opcodes by name (see `pickletools`); the comment says what each does."""

    # protocol 0 and 1
    MARK = b"("  # push a mark: the start of a TUPLE/LIST/DICT/APPENDS/SETITEMS group
    STOP = b"."  # end of the pickle; the top of the stack is its value
    POP = b"0"  # discard the top of the stack
    DUP = b"2"  # push the top of the stack again
    INT = b"I"  # decimal integer on a text line
    BININT = b"J"  # 4-byte signed little-endian integer
    BININT1 = b"K"  # 1-byte unsigned integer
    BININT2 = b"M"  # 2-byte unsigned integer
    NONE = b"N"  # push None
    PERSID = b"P"  # persistent id from a text line
    BINPERSID = b"Q"  # persistent id from the stack (torch's storages)
    REDUCE = b"R"  # callable(*args): where ordinary unpicklers run code
    STRING = b"S"  # quoted Python 2 string on a text line
    SHORT_BINSTRING = b"U"  # Python 2 string, 1-byte length
    BINUNICODE = b"X"  # UTF-8 string, 4-byte length
    APPEND = b"a"  # list.append
    BUILD = b"b"  # obj.__setstate__(state) or obj.__dict__.update(state)
    GLOBAL = b"c"  # import module, get name (two text lines)
    DICT = b"d"  # dict from the items above the mark
    EMPTY_DICT = b"}"
    APPENDS = b"e"  # list.extend with the items above the mark
    GET = b"g"  # push memo[text line]
    BINGET = b"h"  # push memo[1-byte index]
    INST = b"i"  # cls(*items above the mark), cls named on two text lines
    LONG_BINGET = b"j"  # push memo[4-byte index]
    LIST = b"l"  # list from the items above the mark
    EMPTY_LIST = b"]"
    OBJ = b"o"  # items[0](*items[1:]) for the items above the mark
    PUT = b"p"  # memo[text line] = top
    BINPUT = b"q"  # memo[1-byte index] = top
    LONG_BINPUT = b"r"  # memo[4-byte index] = top
    SETITEM = b"s"  # obj[key] = value
    TUPLE = b"t"  # tuple from the items above the mark
    EMPTY_TUPLE = b")"
    SETITEMS = b"u"  # obj[k] = v for each pair above the mark
    BINFLOAT = b"G"  # 8-byte big-endian double
    # protocol 2
    PROTO = b"\x80"  # protocol number
    NEWOBJ = b"\x81"  # cls.__new__(cls, *args)
    EXT1 = b"\x82"  # copyreg extension registry, 1-byte code
    TUPLE1 = b"\x85"
    TUPLE2 = b"\x86"
    TUPLE3 = b"\x87"
    NEWTRUE = b"\x88"
    NEWFALSE = b"\x89"
    LONG1 = b"\x8a"  # signed little-endian integer, 1-byte length
    LONG4 = b"\x8b"  # signed little-endian integer, 4-byte length
    # protocol 3
    BINBYTES = b"B"  # bytes, 4-byte length
    SHORT_BINBYTES = b"C"  # bytes, 1-byte length
    # protocol 4
    SHORT_BINUNICODE = b"\x8c"  # UTF-8 string, 1-byte length
    BINUNICODE8 = b"\x8d"  # UTF-8 string, 8-byte length
    BINBYTES8 = b"\x8e"  # bytes, 8-byte length
    EMPTY_SET = b"\x8f"
    ADDITEMS = b"\x90"
    FROZENSET = b"\x91"
    NEWOBJ_EX = b"\x92"  # cls.__new__(cls, *args, **kwargs)
    STACK_GLOBAL = b"\x93"  # like GLOBAL, with module and name taken from the stack
    MEMOIZE = b"\x94"  # memo[len(memo)] = top
    FRAME = b"\x95"  # 8-byte frame length (a read-ahead hint)
    # protocol 5
    BYTEARRAY8 = b"\x96"
    NEXT_BUFFER = b"\x97"
    READONLY_BUFFER = b"\x98"


# -- encoding single values --------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """Opcode bytes that push one value, spliced in as is (a nested call, a GET)."""

    ops: bytes


def proto(version: int) -> bytes:
    return Op.PROTO + bytes([version])


def frame(length: int) -> bytes:
    return Op.FRAME + struct.pack("<Q", length)


def integer(value: int) -> bytes:
    """The shortest opcode torch's unpickler accepts for `value`."""
    if 0 <= value < 1 << 8:
        return Op.BININT1 + bytes([value])
    if 0 <= value < 1 << 16:
        return Op.BININT2 + struct.pack("<H", value)
    if -(1 << 31) <= value < 1 << 31:
        return Op.BININT + struct.pack("<i", value)
    size = (value.bit_length() + 8) // 8  # room for the sign bit
    return Op.LONG1 + bytes([size]) + value.to_bytes(size, "little", signed=True)


def text(value: str) -> bytes:
    """BINUNICODE: torch's string opcode."""
    raw = value.encode("utf-8", "surrogatepass")
    return Op.BINUNICODE + struct.pack("<I", len(raw)) + raw


def short_text(value: str) -> bytes:
    """SHORT_BINUNICODE: the protocol 4 string opcode, which torch refuses."""
    raw = value.encode("utf-8")
    return Op.SHORT_BINUNICODE + bytes([len(raw)]) + raw


def binary(value: bytes) -> bytes:
    if len(value) < 256:
        return Op.SHORT_BINBYTES + bytes([len(value)]) + value
    return Op.BINBYTES + struct.pack("<I", len(value)) + value


def quoted_line(value: str) -> bytes:
    """The argument of a protocol 0 STRING opcode: a quoted, escaped text line."""
    return repr(value).encode("ascii", "backslashreplace") + b"\n"


def tuple_of(items: Sequence[bytes]) -> bytes:
    """A tuple of already-encoded items, with the short forms pickle uses."""
    short = {0: Op.EMPTY_TUPLE, 1: Op.TUPLE1, 2: Op.TUPLE2, 3: Op.TUPLE3}
    if len(items) == 0:
        return Op.EMPTY_TUPLE
    if len(items) in short:
        return b"".join(items) + short[len(items)]
    return Op.MARK + b"".join(items) + Op.TUPLE


def value(obj: Any) -> bytes:
    """Opcodes that push plain data: None, bools, ints, floats, str, bytes, tuples, lists, dicts."""
    if isinstance(obj, Raw):
        return obj.ops
    if obj is None:
        return Op.NONE
    if obj is True:
        return Op.NEWTRUE
    if obj is False:
        return Op.NEWFALSE
    if isinstance(obj, int):
        return integer(obj)
    if isinstance(obj, float):
        return Op.BINFLOAT + struct.pack(">d", obj)
    if isinstance(obj, str):
        return text(obj)
    if isinstance(obj, bytes):
        return binary(obj)
    if isinstance(obj, tuple):
        return tuple_of([value(item) for item in obj])
    if isinstance(obj, list):
        body = b"".join(value(item) for item in obj)
        return Op.EMPTY_LIST + (Op.MARK + body + Op.APPENDS if obj else b"")
    if isinstance(obj, dict):
        body = b"".join(value(k) + value(v) for k, v in obj.items())
        return Op.EMPTY_DICT + (Op.MARK + body + Op.SETITEMS if obj else b"")
    raise TypeError(f"no encoding for {type(obj).__name__}")


def global_ref(module: str, name: str) -> bytes:
    """GLOBAL: the name on two text lines (every protocol's way, and torch's)."""
    return Op.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n"


def stack_global_ref(module: str, name: str) -> bytes:
    """STACK_GLOBAL: protocol 4's way, with module and name pushed as strings first."""
    return short_text(module) + short_text(name) + Op.STACK_GLOBAL


def call(func: bytes, *args: Any) -> bytes:
    """GLOBAL/… + args tuple + REDUCE: `func(*args)`, the classic code-execution shape."""
    return func + value(tuple(args)) + Op.REDUCE


def call_global(module: str, name: str, *args: Any) -> bytes:
    return call(global_ref(module, name), *args)


def whole(body: bytes, protocol: int = 2) -> bytes:
    """A complete pickle: PROTO, the body, STOP."""
    return proto(protocol) + body + Op.STOP


def reduce_pickle(module: str, name: str, *args: Any, protocol: int = 2) -> bytes:
    """A pickle whose value is `module.name(*args)`."""
    return whole(call_global(module, name, *args), protocol)


# -- payloads: the only thing any of them would do is create the marker -------------------


def shell_touch(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


def python_touch(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


class ReducesTo:
    """An object that pickles as `func(*args)`; `pickle.dumps` records the name, never calls it."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.func, self.args)


# -- torch's data.pkl, by hand ------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One entry of a hand-written state_dict: a view of storage `key`."""

    name: str
    key: str
    numel: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int = 0
    location: str = "cpu"
    storage_type: tuple[str, str] = ("torch", "FloatStorage")

    @property
    def itemsize(self) -> int:
        return 8 if self.storage_type[1] in ("DoubleStorage", "LongStorage") else 4


def float_tensor(name: str, key: str, *shape: int, location: str = "cpu") -> TensorSpec:
    """A contiguous float32 tensor that is its whole storage."""
    numel, strides, step = 1, [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    for dim in shape:
        numel *= dim
    return TensorSpec(name, key, numel, tuple(shape), tuple(reversed(strides)), location=location)


def storage_pid(spec: TensorSpec, *, legacy: bool = False) -> bytes:
    """('storage', <storage class>, key, location, numel[, view_metadata]) + BINPERSID."""
    items = [
        text("storage"),
        global_ref(*spec.storage_type),
        text(spec.key),
        text(spec.location),
        integer(spec.numel),
    ]
    if legacy:
        items.append(Op.NONE)  # the legacy format's view_metadata: not a view
    return Op.MARK + b"".join(items) + Op.TUPLE + Op.BINPERSID


def empty_ordered_dict() -> bytes:
    return call_global("collections", "OrderedDict")


def rebuild_tensor(spec: TensorSpec, *, legacy: bool = False, pid: bytes | None = None) -> bytes:
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""
    args = [
        pid if pid is not None else storage_pid(spec, legacy=legacy),
        integer(spec.offset),
        tuple_of([integer(n) for n in spec.size]),
        tuple_of([integer(n) for n in spec.stride]),
        Op.NEWFALSE,
        empty_ordered_dict(),  # backward hooks
    ]
    return global_ref("torch._utils", "_rebuild_tensor_v2") + Op.MARK + b"".join(args) + Op.TUPLE + Op.REDUCE


def state_dict_pickle(
    tensors: Sequence[TensorSpec],
    *,
    legacy: bool = False,
    extra: Mapping[str, bytes] | None = None,
) -> bytes:
    """OrderedDict(name -> tensor), as torch.save writes a state_dict, protocol 2."""
    body = empty_ordered_dict()
    for spec in tensors:
        body += text(spec.name) + rebuild_tensor(spec, legacy=legacy) + Op.SETITEM
    for key, ops in (extra or {}).items():
        body += text(key) + ops + Op.SETITEM
    return whole(body)


def storage_bytes(spec: TensorSpec) -> bytes:
    """Recognisable float32 values 0, 1, 2, … for a spec's whole storage."""
    if spec.itemsize == 4:
        return struct.pack(f"<{spec.numel}f", *range(spec.numel))
    return struct.pack(f"<{spec.numel}d", *range(spec.numel))


# -- zip archives, header by header -------------------------------------------------------

STORED = 0
DEFLATED = 8
FLAG_ENCRYPTED = 0x0001  # traditional PKWARE encryption (miniz, hence torch, refuses it)
FLAG_DATA_DESCRIPTOR = 0x0008  # sizes follow the data instead of being in the local header
FLAG_PATCHED = 0x0020  # "compressed patched data"
FLAG_STRONG_ENCRYPTION = 0x0040
FLAG_UTF8 = 0x0800
_ALIGNMENT = 64  # torch aligns every record's data to 64 bytes
_PADDING_TAG = 0x4246  # "FB": the extra field torch pads local headers with


@dataclass(frozen=True)
class ZipMember:
    """One record. The optional fields make the local and central headers lie."""

    name: str
    data: bytes
    method: int = STORED
    flags: int = 0
    local_name: str | None = None  # CVE-2025-1944: a different name in the local header
    crc: int | None = None  # a CRC-32 that does not match the data
    payload: bytes | None = None  # pre-compressed bytes for a DEFLATED member
    declared_size: int | None = None  # uncompressed size claimed by both headers
    local_flags: int | None = None  # CVE-2025-1945: flags that differ between headers


@dataclass
class _Written:
    member: ZipMember
    offset: int
    crc: int
    stored: bytes
    size: int


def _stored_bytes(member: ZipMember) -> bytes:
    if member.payload is not None:
        return member.payload
    if member.method == DEFLATED:
        squeezer = zlib.compressobj(6, zlib.DEFLATED, -15)
        return squeezer.compress(member.data) + squeezer.flush()
    return member.data


def _local_header(w: _Written, position: int, align: bool) -> bytes:
    m = w.member
    name = (m.local_name if m.local_name is not None else m.name).encode()
    flags = m.local_flags if m.local_flags is not None else m.flags
    fixed = 30 + len(name)
    extra = b""
    if align:
        pad = (-(position + fixed + 4)) % _ALIGNMENT
        extra = struct.pack("<2H", _PADDING_TAG, pad) + b"Z" * pad
    header = struct.pack(
        "<4s5H3L2H", b"PK\x03\x04", 20, flags, m.method, 0, 0x21, w.crc,
        len(w.stored), w.size, len(name), len(extra),
    )  # fmt: skip
    return header + name + extra


def _central_header(w: _Written) -> bytes:
    m = w.member
    name = m.name.encode()
    return struct.pack(
        "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, m.flags, m.method, 0, 0x21, w.crc,
        len(w.stored), w.size, len(name), 0, 0, 0, 0, 0, w.offset,
    ) + name  # fmt: skip


def zip_bytes(members: Iterable[ZipMember], *, align: bool = True, end_record: bool = True) -> bytes:
    """A zip archive written header by header; `end_record=False` cuts off its last 22 bytes."""
    out = bytearray()
    written: list[_Written] = []
    for member in members:
        stored = _stored_bytes(member)
        crc = member.crc if member.crc is not None else zlib.crc32(member.data) & 0xFFFFFFFF
        size = member.declared_size if member.declared_size is not None else len(member.data)
        w = _Written(member, len(out), crc, stored, size)
        out += _local_header(w, len(out), align) + stored
        written.append(w)
    directory = b"".join(_central_header(w) for w in written)
    cd_offset = len(out)
    out += directory
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(written), len(written), len(directory), cd_offset, 0)
    return bytes(out if end_record else out[:-22])


def zip_with_zip64_end(
    plain: Sequence[tuple[str, bytes]], zip64: Sequence[tuple[str, bytes]] | None = None, *, trailer: bytes = b""
) -> bytes:
    """Stored records, each (name, bytes) written once; a central directory of `plain`
    named by the plain end record, and a zip64 locator and end record naming a directory of
    `zip64` (None: the same directory, as a zip64 writer makes it). `trailer` follows all."""
    out, offsets = bytearray(), {}
    for name, data in [*plain, *(zip64 or [])]:
        if (name, data) not in offsets:
            offsets[name, data] = len(out)
            raw = name.encode()
            crc = zlib.crc32(data) & 0xFFFFFFFF
            out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, crc, len(data), len(data), len(raw), 0)
            out += raw + data

    def directory(members: Sequence[tuple[str, bytes]]) -> bytes:
        return b"".join(
            struct.pack(
                "<4s6H3L5H2L", b"PK\x01\x02", 45, 20, 0, 0, 0, 0x21, zlib.crc32(data) & 0xFFFFFFFF,
                len(data), len(data), len(name.encode()), 0, 0, 0, 0, 0, offsets[name, data],
            ) + name.encode()
            for name, data in members
        )  # fmt: skip

    plain_at, plain_dir = len(out), directory(plain)
    out += plain_dir
    other_at, other_dir, other_count = plain_at, plain_dir, len(plain)
    if zip64 is not None:
        other_at, other_dir, other_count = len(out), directory(zip64), len(zip64)
        out += other_dir
    record_at = len(out)
    out += struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, other_count, other_count, len(other_dir), other_at
    )
    out += struct.pack("<4sLQL", b"PK\x06\x07", 0, record_at, 1)
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(plain), len(plain), len(plain_dir), plain_at, 0)
    return bytes(out + trailer)


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0xEDB88320 if n & 1 else n >> 1
        table.append(n)
    return table


_CRC_TABLE = _crc_table()


def zipcrypto(data: bytes, password: bytes, crc: int) -> bytes:
    """Traditional PKWARE encryption (APPNOTE 6.1) of a STORED record's bytes: a 12-byte
    header whose last byte is the CRC's high byte, then the cipher text."""
    keys = [0x12345678, 0x23456789, 0x34567890]

    def update(byte: int) -> None:
        keys[0] = (keys[0] >> 8) ^ _CRC_TABLE[(keys[0] ^ byte) & 0xFF]
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = (keys[2] >> 8) ^ _CRC_TABLE[(keys[2] ^ (keys[1] >> 24)) & 0xFF]

    for byte in password:
        update(byte)
    out = bytearray()
    for byte in bytes(range(11)) + bytes([crc >> 24]) + data:
        temp = (keys[2] | 2) & 0xFFFF
        out.append(byte ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
        update(byte)
    return bytes(out)


def encrypted(member: ZipMember, password: bytes = b"secret") -> ZipMember:
    """The member as a password-protected zip writes it."""
    crc = zlib.crc32(member.data) & 0xFFFFFFFF
    return replace(member, flags=member.flags | FLAG_ENCRYPTED, payload=zipcrypto(member.data, password, crc))


def torch_zip_members(
    data_pkl: bytes,
    records: Mapping[str, bytes] | None = None,
    *,
    root: str = "archive",
    byteorder: bytes | None = b"little",
) -> list[ZipMember]:
    """The records `torch.save` writes, in its order: data.pkl, byteorder, data/<key>, version."""
    members = [ZipMember(f"{root}/data.pkl", data_pkl)]
    if byteorder is not None:
        members.append(ZipMember(f"{root}/byteorder", byteorder))
    members += [ZipMember(f"{root}/data/{key}", raw) for key, raw in (records or {}).items()]
    members.append(ZipMember(f"{root}/version", b"3\n"))
    return members


def torch_zip(data_pkl: bytes, records: Mapping[str, bytes] | None = None, **options: Any) -> bytes:
    return zip_bytes(torch_zip_members(data_pkl, records, **options))


def retouched(members: list[ZipMember], name_suffix: str, **changes: Any) -> list[ZipMember]:
    """The members with the one whose name ends in `name_suffix` changed."""
    return [replace(m, **changes) if m.name.endswith(name_suffix) else m for m in members]


def checkpoint_zip(tensors: Sequence[TensorSpec], **options: Any) -> bytes:
    """A well-formed torch zip checkpoint of `tensors`, one storage record per key."""
    records = {spec.key: storage_bytes(spec) for spec in tensors}
    return torch_zip(state_dict_pickle(tensors), records, **options)


def deflate_zeros(total: int, chunk: int = 1 << 20) -> bytes:
    """A raw DEFLATE stream of `total` zero bytes, built in a few milliseconds.

    After a sync flush the compressor's state repeats, so the bytes for one more
    chunk of zeros are the same every time: the stream is the first chunk, that
    repeated block, and the final empty block. About 1 KiB per MiB of output.
    """
    if total % chunk or total < 3 * chunk:
        raise ValueError("total must be a multiple of chunk, at least three chunks")
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(chunk)
    first = squeezer.compress(zeros) + squeezer.flush(zlib.Z_SYNC_FLUSH)
    repeated = squeezer.compress(zeros) + squeezer.flush(zlib.Z_SYNC_FLUSH)
    again = squeezer.compress(zeros) + squeezer.flush(zlib.Z_SYNC_FLUSH)
    if repeated != again:
        raise RuntimeError("zlib's output for repeated zeros is not periodic")
    final = squeezer.flush(zlib.Z_FINISH)
    return first + repeated * (total // chunk - 1) + final


# -- torch's legacy stacked format ------------------------------------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


@dataclass(frozen=True)
class LegacyStorage:
    key: str
    count: int  # the int64 element count written before the bytes
    raw: bytes


def legacy_sys_info() -> dict[str, Any]:
    return {
        "protocol_version": LEGACY_PROTOCOL_VERSION,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }


@dataclass
class LegacyFile:
    """The five stacked pickles, then each storage as an int64 count and raw bytes."""

    main: bytes
    storages: Sequence[LegacyStorage]
    protocol_version: int = LEGACY_PROTOCOL_VERSION
    sys_info: bytes | None = None
    keys: bytes | None = None
    trailer: bytes = b""
    magic: bytes = field(default_factory=lambda: whole(integer(LEGACY_MAGIC)))

    def to_bytes(self) -> bytes:
        sys_info = self.sys_info if self.sys_info is not None else whole(value(legacy_sys_info()))
        keys = self.keys if self.keys is not None else whole(value([s.key for s in self.storages]))
        out = self.magic + whole(integer(self.protocol_version)) + sys_info + self.main + keys
        for storage in self.storages:
            out += struct.pack("<q", storage.count) + storage.raw
        return out + self.trailer


def legacy_checkpoint(tensors: Sequence[TensorSpec], **options: Any) -> LegacyFile:
    storages = [LegacyStorage(spec.key, spec.numel, storage_bytes(spec)) for spec in tensors]
    return LegacyFile(state_dict_pickle(tensors, legacy=True), storages, **options)


def legacy_tar(members: Mapping[str, bytes]) -> bytes:
    """The oldest torch format: a tar with members sys_info, storages, tensors, pickle."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def empty_legacy_tar(**replaced: bytes) -> bytes:
    """A tar checkpoint of no tensors, with any member replaced."""
    return legacy_tar({**legacy_tar_members(), **replaced})


def legacy_tar_with_a_view(view: tuple[Any, ...] = (2, 1, 1, 2)) -> bytes:
    """A legacy tar of one tensor `w`, [1., 2.], read through storage view `view` (target,
    base, offset, numel) of the 4-float storage 1, which no tensor uses directly."""
    float_storage = Raw(global_ref("torch", "FloatStorage"))
    storages = (
        whole(integer(1))
        + whole(value((1, "cpu", float_storage)))
        + struct.pack("<q4f", 4, 0.0, 1.0, 2.0, 3.0)
        + whole(value([view]))
    )
    layout = struct.pack("<i4x3q", 1, 2, 1, 0)  # ndim (and 4 unused bytes), size, stride, offset
    tensors = whole(integer(1)) + whole(value((3, 2, Raw(global_ref("torch", "FloatTensor"))))) + layout
    main = whole(Op.EMPTY_DICT + text("w") + integer(3) + Op.BINPERSID + Op.SETITEM)
    return legacy_tar({**legacy_tar_members(main), "storages": storages, "tensors": tensors})


# -- tar headers, block by block ---------------------------------------------------------------

TAR_BLOCK = 512
REGULAR, HARDLINK, SYMLINK, GNU_SPARSE = b"0", b"1", b"2", b"S"


def _octal(number: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, number)


def tar_header(
    name: bytes,
    size: int,
    typeflag: bytes = REGULAR,
    *,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    at: Mapping[int, bytes] | None = None,
) -> bytes:
    """One tar header block with a valid checksum. `magic=b""` writes a v7 header, which
    tarfile opens too; `at` overwrites fields by offset (a GNU sparse map)."""
    block = bytearray(TAR_BLOCK)
    block[0 : len(name)] = name
    for offset, field_bytes in {100: _octal(0o644, 8), 108: _octal(0, 8), 116: _octal(0, 8)}.items():
        block[offset : offset + 8] = field_bytes
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(0, 12)
    block[156:157] = typeflag
    block[157 : 157 + len(linkname)] = linkname
    block[257 : 257 + len(magic)] = magic
    for offset, field_bytes in (at or {}).items():
        block[offset : offset + len(field_bytes)] = field_bytes
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def tar_member(name: bytes, data: bytes, typeflag: bytes = REGULAR, **header: Any) -> bytes:
    """A header and its data padded to whole blocks."""
    return tar_header(name, len(data), typeflag, **header) + data + bytes(-len(data) % TAR_BLOCK)


def tar_link(name: bytes, target: bytes, typeflag: bytes = HARDLINK) -> bytes:
    return tar_header(name, 0, typeflag, linkname=target)


def gnu_sparse_member(name: bytes, pickle_bytes: bytes) -> bytes:
    """A GNU sparse member that tarfile (hence torch.load) expands to `PROTO, BINBYTES of
    n zero bytes, pickle_bytes`, while its bytes in place read `PROTO, BINBYTES holding
    pickle_bytes, STOP`: the stored chunks are the prefix and `pickle_bytes`, with a hole of
    n bytes between them in the expanded file. `pickle_bytes` must not start with PROTO."""
    n = len(pickle_bytes) + 10
    prefix = proto(2) + Op.BINBYTES + struct.pack("<I", n)
    stored = prefix + pickle_bytes
    sparse_map = {
        386: _octal(0, 12),  # chunk 1: the prefix, at offset 0
        398: _octal(len(prefix), 12),
        410: _octal(len(prefix) + n, 12),  # chunk 2: after a hole of n bytes
        422: _octal(len(pickle_bytes), 12),
        483: _octal(len(prefix) + n + len(pickle_bytes), 12),  # the expanded size
    }
    padding = bytearray(-len(stored) % TAR_BLOCK)
    padding[n - len(pickle_bytes)] = Op.STOP[0]  # where the in-place reading's bytes end
    header = tar_header(name, len(stored), GNU_SPARSE, magic=b"ustar  \0", at=sparse_map)
    return header + stored + bytes(padding)


def tar_end() -> bytes:
    return bytes(2 * TAR_BLOCK)


def legacy_tar_members(pickle_member: bytes = b"") -> dict[str, bytes]:
    """torch's legacy tar members of an empty checkpoint, its main pickle `pickle_member`
    (an empty dict when not given)."""
    return {
        "sys_info": whole(value(legacy_sys_info())),
        "storages": whole(integer(0)) + whole(value([])),  # no storages, no storage views
        "tensors": whole(integer(0)),
        "pickle": pickle_member or whole(value({})),
    }


# -- safetensors ----------------------------------------------------------------------------------


def safetensors_bytes(header: bytes, data: bytes = b"", declared_length: int | None = None) -> bytes:
    """u64 little-endian header length, the header bytes, the data buffer."""
    length = len(header) if declared_length is None else declared_length
    return struct.pack("<Q", length) + header + data


# -- things that are not checkpoints at all -----------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_image() -> bytes:
    """A valid 1x1 grey PNG."""
    header = struct.pack(">2I5B", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x80")
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels) + _png_chunk(b"IEND", b"")
