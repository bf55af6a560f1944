"""safetensors: an 8-byte little-endian header length, a JSON header, the data buffer.

The header is validated as the reference implementation (`safetensors/src/tensor.rs`)
does before anything is trusted: size limit, UTF-8, JSON object, known dtypes,
shapes whose element count does not overflow, and offsets that, sorted, tile the
data buffer exactly with no gap, overlap or leftover. Only the header is read.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, NoReturn

from ckpttool.checkpoint import Checkpoint, Record, Storage, TensorRef, contiguous_strides
from ckpttool.dtypes import BY_SAFETENSORS, DTYPES, DType
from ckpttool.errors import SafetensorsError
from ckpttool.formatnames import SAFETENSORS
from ckpttool.formats.format import Format, Found, Probe

MAX_HEADER_SIZE = 100_000_000
_U64_MAX = (1 << 64) - 1
_JSON_SPACE = b" \t\n\r"
_MAX_NESTING = 127  # serde_json's recursion limit, counting the header object itself
_ENTRY_FIELDS = frozenset({"dtype", "shape", "data_offsets"})


def looks_like_safetensors(head: bytes, file_size: int) -> bool:
    """A JSON object after 8 bytes (JSON whitespace before it is fine: the reference parses
    the header with serde_json). The length is not required to fit: a header that claims
    too much is a safetensors file with a bad header, reported as such; but 8 bytes of
    text (a JSON file such as `{"root": {...`) are not a length, whatever follows them."""
    body = head[8:].lstrip(_JSON_SPACE)
    if len(head) < 9 or body[:1] != b"{" or struct.unpack_from("<Q", head)[0] < 2:
        return False
    # A header object opens with a key or closes at once: random data with a `{` at byte 8
    # (one file in 256) is not taken for a broken safetensors file.
    if body[1:].lstrip(_JSON_SPACE)[:1] not in (b'"', b"}", b""):
        return False
    return not all(0x20 <= byte < 0x7F or byte in _JSON_SPACE for byte in head[:8])


def read_header(path: str) -> tuple[dict[str, Any], int, int]:
    """(header, data_start, file_size) after the reference's size checks."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise SafetensorsError("file shorter than the 8-byte header length", path=path)
        n = struct.unpack("<Q", prefix)[0]
        if n > MAX_HEADER_SIZE:
            raise SafetensorsError(f"header of {n} bytes exceeds the {MAX_HEADER_SIZE} byte limit", path=path)
        if 8 + n > size:
            raise SafetensorsError(f"header of {n} bytes is longer than the file", path=path)
        raw = f.read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SafetensorsError("header is not valid UTF-8", path=path) from None
    try:
        header = json.loads(
            text,
            object_pairs_hook=_Object.from_pairs,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_finite_int,
        )
        _check_structure(header)
    except (ValueError, RecursionError) as exc:
        raise SafetensorsError(f"header is not valid JSON: {exc}", path=path) from None
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object", path=path)
    return header, 8 + n, size


# JSON as serde_json (the reference's parser) reads it, where Python's json differs.


class _Object(dict[str, Any]):
    """A JSON object that remembers which keys it held more than once (the last wins, as in
    the reference's maps; for a struct's own fields a repeat is an error there)."""

    repeated: frozenset[str] = frozenset()
    overwritten: tuple[tuple[str, Any], ...] = ()  # the earlier values of repeated keys

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _Object:
        out = cls()
        overwritten = []
        for key, value in pairs:
            _check_text(key)
            if isinstance(value, str):
                _check_text(value)
            if key in out:
                overwritten.append((key, out[key]))
            out[key] = value
        out.repeated = frozenset(key for key, _ in overwritten)
        out.overwritten = tuple(overwritten)
        return out


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a lone surrogate escape in a string") from None


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} out of range")
    return value


def _finite_int(text: str) -> int:
    value = int(text)
    if abs(value) > _U64_MAX:  # serde_json reads it as a float, which must be finite
        _finite_float(text)
    return value


def _check_structure(header: Any) -> None:
    """serde_json's nesting limit, strings in arrays, and repeated keys where the reference
    refuses them: `__metadata__` twice, or a tensor's own field twice."""
    if isinstance(header, _Object) and "__metadata__" in header.repeated:
        raise ValueError("duplicate field `__metadata__`")
    for value in header.values() if isinstance(header, dict) else ():
        if isinstance(value, _Object) and value.repeated & _ENTRY_FIELDS:
            raise ValueError(f"duplicate field `{sorted(value.repeated & _ENTRY_FIELDS)[0]}`")
    pending: list[tuple[Any, int]] = [(header, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > _MAX_NESTING:
            raise ValueError("recursion limit exceeded")
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                pending.append((child, depth + 1))
            elif isinstance(child, str) and isinstance(node, list):
                _check_text(child)


def read_safetensors(path: str) -> Checkpoint:
    header, data_start, size = read_header(path)
    metadata = _metadata(path, header.pop("__metadata__", None))
    entries = {name: _entry(path, name, info) for name, info in header.items()}
    for name, info in getattr(header, "overwritten", ()):
        # The reference deserializes every entry of a repeated name before the last wins:
        # an earlier one that is no tensor entry fails the file there too.
        if name != "__metadata__":
            _fields(path, name, info)
    _check_offsets(path, entries, size - data_start)
    tensors: dict[str, Any] = {}
    storages: dict[str, Storage] = {}
    for name, (dtype, shape, begin, end) in entries.items():
        record = Record(path, name, data_start + begin, end - begin)
        numel = _numel(shape)
        storage = Storage(name, dtype, numel, "cpu", record)
        storages[name] = storage
        tensors[name] = TensorRef(dtype, shape, contiguous_strides(shape), 0, storage)
    return Checkpoint(path, SAFETENSORS, size, tensors, storages, "little", metadata, [], [path])


def _metadata(path: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SafetensorsError("__metadata__ must map strings to strings", path=path)
    return value


def _entry(path: str, name: str, info: Any) -> tuple[str, tuple[int, ...], int, int]:
    dtype, shape, begin, end = _fields(path, name, info)
    if end < begin:
        raise SafetensorsError(f"tensor {name!r}: data_offsets end before they begin", path=path)
    numel = _numel(shape)
    if numel > _U64_MAX or numel * dtype.bits > _U64_MAX:
        raise SafetensorsError(f"tensor {name!r}: shape {list(shape)} overflows", path=path)
    if (numel * dtype.bits) % 8:
        raise SafetensorsError(f"tensor {name!r}: {numel} x {dtype.name} is not a whole number of bytes", path=path)
    if end - begin != numel * dtype.bits // 8:
        raise SafetensorsError(
            f"tensor {name!r}: holds {end - begin} bytes but shape {list(shape)} of {dtype.safetensors} needs "
            f"{numel * dtype.bits // 8}",
            path=path,
        )
    return dtype.name, shape, begin, end


def _fields(path: str, name: str, info: Any) -> tuple[DType, tuple[int, ...], int, int]:
    """An entry's fields as the reference deserializes them: a known dtype, a list of
    sizes, and [begin, end]."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise SafetensorsError(f"tensor {name!r}: entry needs dtype, shape and data_offsets", path=path)
    dtype = BY_SAFETENSORS.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise SafetensorsError(f"tensor {name!r}: unknown dtype {info['dtype']!r}", path=path)
    shape, offsets = info["shape"], info["data_offsets"]
    if not _is_uint_list(shape):
        raise SafetensorsError(f"tensor {name!r}: shape {shape!r} is not a list of sizes", path=path)
    if not _is_uint_list(offsets) or len(offsets) != 2:
        raise SafetensorsError(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]", path=path)
    begin, end = offsets
    return dtype, tuple(shape), begin, end


def _check_offsets(path: str, entries: dict[str, tuple[str, tuple[int, ...], int, int]], buffer: int) -> None:
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
        if begin != position:
            what = "overlaps the previous tensor" if begin < position else "leaves a gap before it"
            raise SafetensorsError(f"tensor {name!r}: data_offsets {what}", path=path)
        position = end
    if position != buffer:
        raise SafetensorsError(f"data buffer holds {buffer} bytes but the tensors describe {position}", path=path)


def _is_uint_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _U64_MAX for v in value
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def _validated(probe: Probe) -> Found:
    """A safetensors file holds no pickle for safetensors' readers; its header is still
    validated. torch.load (a `pytorch_model.bin` is handed to it) unpickles the file from
    its first byte, and the header's length can be opcodes that skip through the header
    to a pickle in a string or in tensor data: that reading is scanned too."""
    from ckpttool.formats.containers import scan_torch_load_reading  # it imports this module
    from ckpttool.pickle.opcodes import NAMES

    read_safetensors(probe.path)
    if not probe.head or probe.head[0] not in NAMES:
        return Found()  # its first byte is no opcode: torch.load fails there, reading nothing
    return scan_torch_load_reading(probe.path)


SAFETENSORS_FORMAT = Format(
    SAFETENSORS,
    lambda probe: looks_like_safetensors(probe.head, probe.size),
    pickles=_validated,
    read=lambda probe: read_safetensors(probe.path),
)


# -- writing ---------------------------------------------------------------------------------


def header_bytes(entries: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str]) -> bytes:
    """The 8-byte length and JSON header for (name, dtype, shape, nbytes) entries laid out
    in order, padded with spaces to 8 bytes as the reference writer does."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        code = DTYPES[dtype].safetensors
        if code is None:
            raise SafetensorsError(f"tensor {name!r} has dtype {dtype}, which safetensors cannot store")
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text
