"""ckpttool's safetensors reader against `safetensors.safe_open` on the same bytes.

Headers are generated (whitespace around and inside the JSON, key order, offsets that
tile the buffer or not, every dtype, metadata of strings or not, shapes large and
empty, duplicate keys, JSON only Python accepts, padding) and both readers must agree:
both accept the file with the same tensors (dtype, shape) and metadata, or both refuse it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from ckpttool.dtypes import BY_SAFETENSORS
from ckpttool.errors import CkptError
from ckpttool.formats import read_checkpoint

BITS = {code: dtype.bits for code, dtype in BY_SAFETENSORS.items()}
WHITESPACE = st.text(alphabet=" \t\n\r", max_size=3)
Outcome = tuple[str, Any]


def reference(path: Path) -> Outcome:
    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
            return "ok", (tensors, f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - any refusal
        return "error", type(exc).__name__


def ours(path: Path) -> Outcome:
    try:
        checkpoint = read_checkpoint(str(path))
    except CkptError as exc:
        return "error", exc.message
    tensors = {
        name: (BY_SAFETENSORS_NAME[t.dtype], tuple(t.shape))  # type: ignore[union-attr]
        for name, t in checkpoint.root.items()
    }
    return "ok", (tensors, checkpoint.metadata)


BY_SAFETENSORS_NAME = {dtype.name: code for code, dtype in BY_SAFETENSORS.items()}


def agree(a: Outcome, b: Outcome) -> bool:
    return a[0] == b[0] == "error" or a == b


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(JSON header text, data buffer) with each tensor's offsets laid out in a random order."""
    count = draw(st.integers(0, 4))
    names = draw(st.lists(st.text(max_size=4), min_size=count, max_size=count))
    entries: list[tuple[str, str]] = []
    offset = 0
    for name in names:
        code = draw(st.sampled_from(sorted(BITS) + ["F8", "X1"]))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        numel = 1
        for dim in shape:
            numel *= dim
        nbytes = (numel * BITS.get(code, 8) + 7) // 8
        begin = offset + draw(st.sampled_from([0, 0, 0, 1, -1]))
        end = max(begin, offset + nbytes) + draw(st.sampled_from([0, 0, 0, 1]))
        offset = end
        body = {"dtype": code, "shape": shape, "data_offsets": [begin, end]}
        if draw(st.booleans()):
            body = dict(reversed(list(body.items())))
        text = json.dumps(body, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
        entries.append((name, text))
    metadata = draw(
        st.none()
        | st.dictionaries(st.text(max_size=3), st.text(max_size=3) | st.integers(), max_size=2).map(json.dumps)
        | st.just("null")
    )
    if metadata is not None:
        entries.insert(draw(st.integers(0, len(entries))), ("__metadata__", metadata))
    if entries and draw(st.integers(0, 9)) == 0:  # a duplicate key
        entries.append(draw(st.sampled_from(entries)))
    pairs = [json.dumps(name) + draw(WHITESPACE) + ":" + draw(WHITESPACE) + text for name, text in entries]
    inner = ("," + draw(WHITESPACE)).join(pairs)
    header = draw(WHITESPACE) + "{" + draw(WHITESPACE) + inner + draw(WHITESPACE) + "}" + draw(WHITESPACE)
    raw = header.encode("utf-8", "surrogatepass")
    raw += b" " * draw(st.sampled_from([0, -len(raw) % 8]))
    buffer_size = max(0, offset + draw(st.sampled_from([0, 0, 0, 1, -1])))
    return raw, bytes(buffer_size)


def write(tmp_path: Path, header: bytes, data: bytes, declared: int | None = None) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header) if declared is None else declared) + header + data)
    return path


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=headers())
def test_generated_headers_read_as_the_reference_reads_them(tmp_path: Path, case: tuple[bytes, bytes]) -> None:
    path = write(tmp_path, *case)
    theirs, mine = reference(path), ours(path)
    assert agree(theirs, mine), (case[0][:300], theirs, mine)


@pytest.mark.parametrize(
    "header",
    [
        b' {"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        b'\n\t{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}   ',
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":NaN}}',
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":"\\ud800"}}',
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1}}',
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":null}',
        b'{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}',
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}\x00',
        b'{"__metadata__":{"k":"v"},"__metadata__":{"k":"w"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        b"{}",
        b"  {}",
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + b"[" * 125 + b"]" * 125 + b"}}",
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + b"[" * 126 + b"]" * 126 + b"}}",
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1' + b"0" * 400 + b"}}",
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1e-400}}',
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":["\\udc00"]}}',
    ],
)
def test_hand_written_headers(tmp_path: Path, header: bytes) -> None:
    path = write(tmp_path, header, bytes(4) if b'"a"' in header else b"")
    theirs, mine = reference(path), ours(path)
    assert agree(theirs, mine), (theirs, mine)
