"""One list shared many times over through the memo: level k is a list of 60 references
to level k-1, six levels deep. A file of about a kilobyte holds 60**6 (some 4.7e10) paths
to the innermost list; a walk that follows every path never ends. Every command must
finish at once, each container looked at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.builders import Op, global_ref, torch_zip, value, whole
from support.hostile import FileWriter, assert_no_crash, run_cli_process

FAN, LEVELS = 60, 6
_SECONDS = 60  # far beyond what a walk of the few hundred distinct containers takes


def shared_levels() -> bytes:
    """Opcodes that push the top level; memo slot k holds level k."""
    ops = Op.EMPTY_LIST + Op.BINPUT + b"\x00" + Op.POP
    for level in range(1, LEVELS + 1):
        ops += Op.MARK + (Op.BINGET + bytes([level - 1])) * FAN + Op.LIST + Op.BINPUT + bytes([level]) + Op.POP
    return ops + Op.BINGET + bytes([LEVELS])


def attributes(**encoded: bytes) -> bytes:
    return Op.EMPTY_DICT + Op.MARK + b"".join(value(k) + v for k, v in encoded.items()) + Op.SETITEMS


def rng_state() -> bytes:
    """A numpy RandomState whose state (checked to be numbers and arrays) is the shared list."""
    ctor = global_ref("numpy.random._pickle", "__randomstate_ctor") + value(("MT19937",)) + Op.REDUCE
    return whole(ctor + attributes(state=shared_levels()) + Op.BUILD)


def optimizer() -> bytes:
    """A whole SGD (its state checked to be numbers, strings and tensors) holding it as a
    parameter's momentum buffer."""
    per_parameter = Op.EMPTY_DICT + value(0) + attributes(momentum_buffer=shared_levels()) + Op.SETITEM
    state = attributes(defaults=value({}), param_groups=value([{"params": [0]}]), state=per_parameter)
    return whole(global_ref("torch.optim.sgd", "SGD") + Op.EMPTY_TUPLE + Op.NEWOBJ + state + Op.BUILD)


def plain_entry() -> bytes:
    """A training checkpoint's top-level entry, as diff compares entries."""
    return whole(attributes(history=shared_levels()))


CASES = {"rng state": (rng_state, "scan"), "optimizer": (optimizer, "scan"), "entry": (plain_entry, "diff")}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_list_shared_through_the_memo_is_walked_once(write: FileWriter, case: str) -> None:
    build, command = CASES[case]
    path: Path = write("shared.pt", torch_zip(build()))
    assert path.stat().st_size < 4096
    args = [path, path] if command == "diff" else [path]
    outcome = run_cli_process(command, *args, timeout=_SECONDS)
    assert_no_crash(outcome)
    assert outcome.exit_code in (0, 1), outcome.stderr
