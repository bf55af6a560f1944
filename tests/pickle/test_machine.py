"""The pickle machine against the ground truth of Python's own pickler."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpttool.errors import CkptError, LimitError, PickleError
from ckpttool.interpret import Interpreter
from ckpttool.ops.inspect import jsonable
from ckpttool.pickle import Call, Global, Limits, PersistentRef, decode
from ckpttool.pickle.machine import USE_BUILD, USE_CALL, USE_INSTANTIATE, TrackedGlobal
from ckpttool.weights import all_tensors

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


def interpret(data: bytes) -> Any:
    return Interpreter(lambda pid: pid, "test").value(decode(data).value)


def same(a: Any, b: Any) -> bool:
    """Structural equality that also tells 1 from True and a tuple from a list."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.frozensets(st.integers(), max_size=4),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=4)
        | st.sets(st.integers() | st.text(max_size=5), max_size=4)
    ),
    max_leaves=25,
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(value=plain, protocol=st.sampled_from(PROTOCOLS))
def test_plain_values_decode_to_what_pickle_loads(value: Any, protocol: int) -> None:
    data = pickle.dumps(value, protocol=protocol)
    assert same(interpret(data), pickle.loads(data))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_references_stay_shared(protocol: int) -> None:
    inner = [1, 2]
    decoded = decode(pickle.dumps({"a": inner, "b": inner}, protocol=protocol)).value
    assert decoded["a"] is decoded["b"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_self_referencing_list_decodes(protocol: int) -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    decoded = decode(pickle.dumps(loop, protocol=protocol)).value
    assert decoded[1] is decoded


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_instances_become_inert_calls_with_their_state(protocol: int) -> None:
    decoded = decode(pickle.dumps(Point(3), protocol=protocol))
    obj = decoded.value
    assert isinstance(obj, Call) and isinstance(obj.func, Global)
    assert obj.func.qualname == f"{__name__}.Point"
    assert obj.state == {"x": 3}
    (ref,) = [g for g in decoded.globals if g.name == "Point"]
    assert isinstance(ref, TrackedGlobal) and ref.uses == {USE_INSTANTIATE, USE_BUILD}


class RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reduce_payload_is_recorded_not_run(protocol: int, marker: Path) -> None:
    data = pickle.dumps(RunsCommand(f"touch {marker}"), protocol=protocol)
    decoded = decode(data)
    call = decoded.value
    assert isinstance(call, Call) and call.func.qualname in ("posix.system", "os.system")
    assert call.args == (f"touch {marker}",)
    assert any(isinstance(g, TrackedGlobal) and g.uses == {USE_CALL} for g in decoded.globals)
    assert not marker.exists()


def test_unknown_modules_are_never_imported() -> None:
    data = b"\x80\x02cno_such_package.models\nNet\n)\x81}b."
    decoded = decode(data)
    assert decoded.value.func.qualname == "no_such_package.models.Net"


def test_python2_names_are_read_as_python3_resolves_them() -> None:
    decoded = decode(b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x001\x85R.")
    assert decoded.value.func.qualname == "builtins.eval"


def test_persistent_ids_become_references() -> None:
    data = b"\x80\x02X\x07\x00\x00\x00storageX\x01\x00\x00\x000\x86Q."
    ref = decode(data).value
    assert isinstance(ref, PersistentRef) and ref.pid == ("storage", "0")


# -- what torch would refuse -------------------------------------------------------------------


def test_torch_protocol_2_opcodes_are_not_flagged() -> None:
    assert decode(pickle.dumps({"a": [1, 2.0, "x", (1, 2, 3)]}, protocol=2)).foreign_opcodes == {}


def test_protocol_4_opcodes_are_flagged() -> None:
    foreign = decode(pickle.dumps({"a": "x"}, protocol=4)).foreign_opcodes
    assert {"FRAME", "SHORT_BINUNICODE", "MEMOIZE"} <= set(foreign)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x80\x02cbuiltins\nlist\n}b.", "BUILD on global builtins.list"),
        (b"\x80\x02cbuiltins\ngetattr\n)R)R.", "REDUCE on the result of builtins.getattr"),
        (b"\x80\x02}K\x01a.", "APPEND on a dict"),
        (b"\x80\x02\x82\x01.", "extension code 1"),
        # a state dict given to BUILD, then its value replaced: the object saw the first
        (
            b"\x80\x02cargparse\nNamespace\n)\x81}q\x00X\x01\x00\x00\x00aK\x01sbh\x00X\x01\x00\x00\x00aK\x02s\x86.",
            "SETITEM replaces the value of key 'a'",
        ),
        (b"\x80\x02}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00aK\x02u.", "SETITEMS replaces the value of key 'a'"),
    ],
)
def test_shapes_only_an_attack_produces_are_problems(data: bytes, fragment: str) -> None:
    assert any(fragment in p for p in decode(data).problems)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x80\x02cbuiltins\nlist\n)R(K\x01K\x02u.", "SETITEMS on the result of builtins.list"),
        (b"\x80\x02cbuiltins\nlist\n)R(K\x01e.", "APPENDS on the result of builtins.list"),
        (b"\x80\x02(X\x06\x00\x00\x00moduleK\x01tQ.", "persistent id ('module', 1) is not a storage"),
    ],
)
def test_what_only_torch_refuses_is_a_refusal_not_a_problem(data: bytes, fragment: str) -> None:
    """A method call on an object the pickle built, or a persistent id torch.load fails on:
    torch's weights_only loader refuses them; whether they are dangerous is the verdict's call."""
    decoded = decode(data)
    assert any(fragment in r for r in decoded.refusals), decoded.refusals
    assert not decoded.problems


def test_every_call_is_recorded_reachable_or_not() -> None:
    # REDUCE whose result is popped, then NEWOBJ: both are calls a review must see.
    data = b"\x80\x02cbuiltins\nlist\n)R0cargparse\nNamespace\n)\x81."
    decoded = decode(data)
    assert [(c.func_name, c.kind) for c in decoded.calls] == [
        ("builtins.list", "call"),
        ("argparse.Namespace", "newobj"),
    ]


def test_legacy_module_id_stands_for_its_class() -> None:
    # NEWOBJ on ('module', cls, file, source): torch's legacy loader hands back cls.
    data = b"\x80\x02(X\x06\x00\x00\x00modulecm\nNet\nX\x01\x00\x00\x00fX\x01\x00\x00\x00stQ)\x81."
    decoded = decode(data)
    assert not decoded.problems
    (net,) = decoded.globals
    assert net.qualname == "m.Net" and "instantiate" in net.uses


# -- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "ends before its STOP"),
        (b"\x80\x02K", "ends inside an opcode"),
        (b"\x80\x02]", "ends before its STOP"),
        (b"\x80\x02\x87.", "stack underflow"),
        (b"\x80\x02h\x05.", "memo slot 5"),
        (b"\x80\x02\xff.", "invalid opcode 0xff"),
        (b"\x80\x02c\xff\xfe\nx\n.", "not valid UTF-8"),
        (b"\x80\x04K\x01K\x02\x93.", "STACK_GLOBAL on a int and a int"),
        (b"\x80\x02X\x10\x00\x00\x00abc.", "runs past the end"),
        (b"\x80\x02t.", "MARK expected"),
        (b"\x80\x09.", "unsupported pickle protocol 9"),
        (b"\x80\x02}}K\x01s.", "unhashable dict used as a key"),
    ],
)
def test_malformed_pickles_raise_pickle_error(data: bytes, message: str) -> None:
    with pytest.raises(PickleError, match=message):
        decode(data)


def test_every_truncation_of_a_real_pickle_is_a_pickle_error() -> None:
    data = pickle.dumps({"a": [1, 2, (3, "x")], "b": Point(1)}, protocol=2)
    for cut in range(len(data)):
        with pytest.raises(PickleError):
            decode(data[:cut])


def test_failure_keeps_what_was_decoded_for_the_scan() -> None:
    data = b"\x80\x02cposix\nsystem\nX\x01\x00\x00\x00xgarbage"
    with pytest.raises(PickleError) as info:
        decode(data)
    assert [g.qualname for g in info.value.partial.globals] == ["posix.system"]


@pytest.mark.parametrize(
    ("data", "limits", "message"),
    [
        (b"(" * 1_000_000 + b".", Limits(), "nested MARKs"),
        (b"\x80\x02" + b"N" * 200 + b".", Limits(max_opcodes=100), "opcodes"),
        (b"\x80\x02]" + b"".join(b"r" + struct.pack("<I", i) for i in range(20)) + b".", Limits(max_memo=10), "memo"),
        (b"\x80\x02\x8b" + struct.pack("<i", 1 << 20) + b"\x00" * (1 << 20) + b".", Limits(), "integer of"),
        (b"\x80\x02N.", Limits(max_bytes=3), "exceeds the limit"),
    ],
)
def test_limits_fail_closed_with_a_limit_error(data: bytes, limits: Limits, message: str) -> None:
    with pytest.raises(LimitError, match=message):
        decode(data, limits=limits)


@pytest.mark.slow
def test_deeply_nested_dict_keys_hit_a_limit_not_the_c_stack() -> None:
    nested = b"N" + b"\x85" * 100_000  # a tuple nested 100,000 deep
    data = b"\x80\x02}" + nested + b"K\x01s."
    with pytest.raises(LimitError, match="nested too deeply"):
        decode(data)


def test_billion_laughs_by_memo_stays_linear() -> None:
    # Level i is a list holding level i-1 ten times: 10**9 leaves if anything expanded it.
    data = b"\x80\x02X\x03\x00\x00\x00lolq\x00"
    for level in range(1, 10):
        data += b"(" + (b"h" + bytes([level - 1])) * 10 + b"lq" + bytes([level])
    decoded = decode(data + b".")
    assert decoded.opcodes < 200
    value = Interpreter(lambda pid: pid, "test").value(decoded.value)
    assert len(jsonable(value)) == 10  # bounded by its node budget, not 10**9
    assert all_tensors(value) == []


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_our_error(data: bytes) -> None:
    try:
        decode(data)
    except CkptError:
        pass


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.sampled_from([b"\x80\x02", b"\x80\x04\x95", b"(", b"c"]))
def test_bytes_after_a_pickle_header_decode_or_raise_our_error(tail: bytes, head: bytes) -> None:
    try:
        decode(head + tail)
    except CkptError:
        pass
