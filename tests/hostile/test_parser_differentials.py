"""ckpttool's decoder against CPython's unpicklers on the same bytes.

Every global, call and instantiation that any CPython reading meets (`pickle.loads`,
`pickle.Unpickler` over an `io.BytesIO` as torch.load reads `data.pkl`, over a file on
disk as it reads legacy files, and the pure-Python unpickler) must be among those the
machine reports. Where the pickle is framed as picklers frame it, the two agree exactly
and nothing is flagged; where the readings can disagree, the machine says so
("parser differential"), which makes a scan `dangerous`.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.builders import Op, proto, shell_touch, short_text, whole
from support.hostile import assert_dangerous, assert_not_run
from support.oracle import READINGS, ckpttool_meets, cpython_meets, has_differential

from ckpttool.pickle import decode

NAMES = [
    ("os", "system"),
    ("builtins", "eval"),
    ("collections", "OrderedDict"),
    ("__builtin__", "getattr"),  # renamed to builtins.getattr below protocol 3
    ("copy_reg", "_reconstructor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("pkg.mod", "Thing"),
]


def frame(body: bytes, length: int | None = None) -> bytes:
    return Op.FRAME + struct.pack("<Q", len(body) if length is None else length) + body


def global_op(name: tuple[str, str]) -> bytes:
    return Op.GLOBAL + f"{name[0]}\n{name[1]}\n".encode()


def stack_global_op(name: tuple[str, str]) -> bytes:
    return short_text(name[0]) + short_text(name[1]) + Op.STACK_GLOBAL


def binunicode(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return Op.BINUNICODE + struct.pack("<I", len(raw)) + raw


def short_binbytes(value: bytes) -> bytes:
    return Op.SHORT_BINBYTES + bytes([len(value)]) + value


# -- generated pickles: each item pushes exactly one value --------------------------------

_leaves = st.one_of(
    st.integers(0, 255).map(lambda n: Op.BININT1 + bytes([n])),
    st.integers(-(10**6), 10**6).map(lambda n: Op.INT + str(n).encode() + b"\n"),
    st.text(max_size=12).map(binunicode),
    st.text(max_size=12).map(short_text),
    st.binary(max_size=12).map(short_binbytes),
    st.sampled_from([Op.NONE, Op.EMPTY_LIST, Op.EMPTY_DICT, Op.EMPTY_TUPLE, Op.NEWTRUE]),
    st.sampled_from(NAMES).map(global_op),
    st.sampled_from(NAMES).map(stack_global_op),
)


def _compose(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    groups = st.lists(children, max_size=3).map(b"".join)
    return st.one_of(
        groups.map(lambda body: Op.MARK + body + Op.TUPLE),
        groups.map(lambda body: Op.MARK + body + Op.LIST),
        st.tuples(st.sampled_from(NAMES), groups).map(
            lambda t: global_op(t[0]) + Op.MARK + t[1] + Op.TUPLE + Op.REDUCE
        ),
        st.tuples(st.sampled_from(NAMES), groups).map(
            lambda t: stack_global_op(t[0]) + Op.MARK + t[1] + Op.TUPLE + Op.NEWOBJ
        ),
        st.tuples(st.sampled_from(NAMES), children).map(
            lambda t: global_op(t[0]) + Op.EMPTY_TUPLE + Op.NEWOBJ + Op.EMPTY_DICT + Op.BUILD
        ),
        children.map(lambda c: c + Op.MEMOIZE + Op.DUP + Op.TUPLE2),
    )


items = st.recursive(_leaves, _compose, max_leaves=12)
item_lists = st.lists(items, min_size=1, max_size=6)


def unframed(parts: Sequence[bytes]) -> list[bytes]:
    """The body of `[item, ...]` as opcode-aligned chunks (MARK, items, LIST + STOP)."""
    return [Op.MARK, *parts, Op.LIST + Op.STOP]


def framed_regularly(chunks: list[bytes], cuts: list[int], unframed_groups: set[int]) -> bytes:
    """Frames that start and end on opcode boundaries, some groups left unframed, as a
    pickler writes large bytes outside frames."""
    bounds = sorted({c % (len(chunks) + 1) for c in cuts} | {0, len(chunks)})
    out = proto(4)
    for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        group = b"".join(chunks[a:b])
        out += group if i in unframed_groups and b < len(chunks) else frame(group)
    return out


def framed_anywhere(body: bytes, cuts: list[int], slack: list[int]) -> bytes:
    """Frames cut at arbitrary byte offsets, their declared lengths off by `slack`."""
    bounds = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    out = proto(4)
    for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        declared = max(0, b - a + (slack[i] if i < len(slack) else 0))
        out += frame(body[a:b], declared)
    return out


def assert_machine_covers_every_reading(data: bytes) -> dict[str, object]:
    ours, decoded = ckpttool_meets(data)
    met = {reading: cpython_meets(data, reading) for reading in READINGS}
    for reading, theirs in met.items():
        assert theirs.globals <= ours.globals, (reading, theirs, ours)
        assert theirs.called <= ours.called, (reading, theirs, ours)
        assert theirs.instantiated <= ours.instantiated | ours.called, (reading, theirs, ours)
    readings_agree = len({(frozenset(m.globals), frozenset(m.called), m.error is None) for m in met.values()}) == 1
    if not readings_agree:
        assert ours.error is not None or has_differential(decoded), (met, ours)
    return {"ours": ours, "decoded": decoded, "met": met}


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=item_lists, cuts=st.lists(st.integers(0, 50), max_size=4), unframed_groups=st.sets(st.integers(0, 4)))
def test_regular_frames_read_exactly_as_cpython_reads_them(
    parts: list[bytes], cuts: list[int], unframed_groups: set[int]
) -> None:
    data = framed_regularly(unframed(parts), cuts, unframed_groups)
    outcome = assert_machine_covers_every_reading(data)
    ours, decoded = outcome["ours"], outcome["decoded"]
    loads = cpython_meets(data, "loads")
    assert not has_differential(decoded)  # type: ignore[arg-type]
    assert (ours.error is None) == (loads.error is None), (ours, loads)  # type: ignore[attr-defined]
    if loads.error is None:
        assert (ours.globals, ours.called) == (loads.globals, loads.called)  # type: ignore[attr-defined]


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=item_lists,
    cuts=st.lists(st.integers(0, 400), min_size=1, max_size=5),
    slack=st.lists(st.integers(-3, 3), max_size=5),
    trailer=st.sampled_from([b"", whole(global_op(("os", "system")) + Op.EMPTY_TUPLE + Op.REDUCE)]),
)
def test_frames_anywhere_never_hide_what_cpython_meets(
    parts: list[bytes], cuts: list[int], slack: list[int], trailer: bytes
) -> None:
    body = b"".join(unframed(parts))
    assert_machine_covers_every_reading(framed_anywhere(body, cuts, slack) + trailer)


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(value=st.recursive(st.text(max_size=30) | st.binary(max_size=30) | st.integers(), st.lists, max_leaves=30))
def test_cpython_pickles_are_never_flagged(value: object) -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(value, protocol=protocol)
        assert not has_differential(assert_machine_covers_every_reading(data)["decoded"])  # type: ignore[arg-type]


def test_large_frames_and_unframed_large_bytes_are_regular() -> None:
    """A pickler writes 64 KiB frames and puts big bytes objects between them."""
    data = pickle.dumps([b"x" * 200_000, "y" * 100_000, list(range(30_000)), b"z" * 70_000], protocol=5)
    decoded = decode(data)
    assert decoded.foreign_opcodes.get("FRAME") is not None
    assert not has_differential(decoded)
    assert decoded.value == pickle.loads(data)


# -- hand-built differentials --------------------------------------------------------------------


def hidden_by_a_string_across_the_frame_end(marker: Path) -> bytes:
    """pickle.loads reads a string and stops; torch.load (io.BytesIO) drops the frame's tail,
    reads the string from after the frame, and then runs os.system."""
    kept = b"abc"  # the part of the string inside the frame
    length = 40
    inside = Op.BINUNICODE + struct.pack("<I", length) + kept
    loads_rest = b"x" * (length - len(kept)) + Op.STOP  # loads: the string ends here, STOP
    filler = b"y" * (length - len(loads_rest))
    payload = global_op(("os", "system")) + binunicode(shell_touch(marker)) + Op.TUPLE1 + Op.REDUCE + Op.STOP
    return proto(4) + frame(inside) + loads_rest + filler + payload


def hidden_in_a_global_line_across_the_frame_end(marker: Path) -> bytes:
    """A text line cut by the frame end: the buffered reader drops its first half."""
    inside = Op.GLOBAL + b"collections\nOrdered"
    after = b"Dict\n" + Op.EMPTY_TUPLE + Op.REDUCE + Op.STOP
    hidden = b"os\nsystem\n" + binunicode(shell_touch(marker)) + Op.TUPLE1 + Op.REDUCE + Op.STOP
    return proto(4) + frame(inside) + b"posix\nsystem\n" + hidden + after


def nested_frame(marker: Path) -> bytes:
    """A FRAME inside a frame, reaching past it: the buffered reader replaces its buffer."""
    payload = global_op(("os", "system")) + binunicode(shell_touch(marker)) + Op.TUPLE1 + Op.REDUCE + Op.STOP
    inner = frame(payload, len(payload))
    return proto(4) + frame(Op.NONE + Op.POP + inner[:5], 1 + 1 + 5) + inner[5:]


def last_frame_past_stop(marker: Path) -> bytes:
    """Two pickles in a stream; the first one's frame covers the second one's opening bytes,
    so a file reader starts the second load somewhere else than loads-after-STOP does."""
    second = whole(global_op(("os", "system")) + binunicode(shell_touch(marker)) + Op.TUPLE1 + Op.REDUCE)
    first = Op.NONE + Op.STOP
    return proto(4) + frame(first + second[:2], len(first) + 2) + second[2:]


def second_proto(marker: Path) -> bytes:
    """PROTO 3 midway: `__builtin__` is no longer renamed for later GLOBALs."""
    call = global_op(("__builtin__", "eval")) + binunicode("1") + Op.TUPLE1 + Op.REDUCE
    return proto(2) + call + Op.POP + proto(3) + call + Op.STOP


def octal_int(marker: Path) -> bytes:
    return Op.INT + b"010\n" + Op.STOP


DIFFERENTIALS = {
    f.__name__: f
    for f in (
        hidden_by_a_string_across_the_frame_end,
        hidden_in_a_global_line_across_the_frame_end,
        nested_frame,
        last_frame_past_stop,
        second_proto,
        octal_int,
    )
}


@pytest.mark.parametrize("name", DIFFERENTIALS)
def test_hand_built_differentials_are_flagged_and_hide_nothing(name: str, marker: Path) -> None:
    data = DIFFERENTIALS[name](marker)
    outcome = assert_machine_covers_every_reading(data)
    assert has_differential(outcome["decoded"]) or outcome["ours"].error, outcome  # type: ignore[attr-defined, arg-type]
    assert_not_run(marker)


def test_the_string_trick_really_hides_a_call_from_pickle_loads(marker: Path) -> None:
    """The point of the first case: the two readings meet different globals."""
    data = hidden_by_a_string_across_the_frame_end(marker)
    assert cpython_meets(data, "loads").globals == set()
    assert cpython_meets(data, "bytesio").called == {"os.system"}
    ours, decoded = ckpttool_meets(data)
    assert "os.system" in ours.called
    assert decoded is not None and decoded.value == "abc" + "x" * 37


@pytest.mark.parametrize(
    "name", ["hidden_by_a_string_across_the_frame_end", "hidden_in_a_global_line_across_the_frame_end"]
)
def test_a_scan_of_a_torch_zip_with_a_framing_trick_is_dangerous(name: str, marker: Path, tmp_path: Path) -> None:
    from support.builders import torch_zip

    path = tmp_path / "framed.pt"
    path.write_bytes(torch_zip(DIFFERENTIALS[name](marker)))
    report = assert_dangerous(path)
    assert any("parser differential" in p for p in report["problems"])
    assert_not_run(marker)
