"""A plain pickle file (often named `.bin` or `.pkl`), decoded without executing it."""

from __future__ import annotations

import mmap
import os
from typing import Any

from ckpttool.checkpoint import Checkpoint, OpaqueCall
from ckpttool.errors import FormatError, NotACheckpointError, PickleError
from ckpttool.formatnames import RAW_PICKLE
from ckpttool.formats.format import Format, Found, Probe, not_a_checkpoint, text_start
from ckpttool.formats.joblib import read_as_joblib, without_problems
from ckpttool.interpret import Interpreter
from ckpttool.pickle import Decoded, decode
from ckpttool.pickle.opcodes import NAMES
from ckpttool.pickle.reach import gadget_label


def read_raw_pickle(path: str, memo: dict[str, Any] | None = None) -> Checkpoint:
    """`memo`: a probe's, where the first pickle is kept for a scan of the same file."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError) as exc:
            raise FormatError(f"cannot map the file: {exc}", path=path) from None
        with data:
            decoded = _first_pickle(data, path, {} if memo is None else memo)
    root = Interpreter(_no_storages, path).value(decoded.value)
    anomalies = []
    if decoded.end < size:
        anomalies.append(f"{size - decoded.end} bytes follow the pickle's STOP (another pickle?)")
    return Checkpoint(path, RAW_PICKLE, size, root, anomalies=anomalies, files=[path])


def _first_pickle(data: mmap.mmap, path: str, memo: dict[str, Any]) -> Decoded:
    """The pickle at the start of the file, decoded once per probe whether a read or a scan
    asks first (a failure too)."""
    outcome: Decoded | PickleError | None = memo.get("first pickle")
    if outcome is None:
        try:
            outcome = decode(data, source=path)
        except PickleError as exc:
            outcome = exc
        memo["first pickle"] = outcome
    if isinstance(outcome, PickleError):
        raise outcome
    return outcome


def _no_storages(pid: Any) -> OpaqueCall:
    # Outside torch's formats a persistent id refers to nothing ckpttool can read.
    return OpaqueCall("persistent_load", (pid,))


def _read(probe: Probe) -> Checkpoint:
    try:
        return read_raw_pickle(probe.path, probe.memo)
    except PickleError as exc:
        # Protocol 2+ pickles open with PROTO; a file that does not and fails to decode
        # is text or binary that happens to start with an opcode's byte.
        if not _opens_with_proto(probe):
            raise NotACheckpointError(_not_a_pickle(probe, exc), path=probe.path) from None
        raise


def raw_pickles(probe: Probe) -> Found:
    """Every pickle in the file, one after another, as a stream of loads would see them."""
    found = Found()
    with open(probe.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start, index = 0, 0
        while start < probe.size:
            name = f"pickle {index}" if index else "pickle"
            try:
                decoded = (
                    _first_pickle(data, probe.path, probe.memo)
                    if start == 0
                    else decode(data, start=start, source=probe.path)
                )
            except PickleError as exc:
                joblib = read_as_joblib(data, start, probe.size, probe.path, exc.partial)
                if joblib and not joblib.problem and exc.partial:
                    found.pickles += [(name + label, d) for label, d in joblib.pickles]
                    found.pickles.append((f"{name} (as pickle.loads reads it)", without_problems(exc.partial)))
                    start, index = joblib.end, index + 1
                    continue
                if index == 0 and not _found_anything(exc) and not _opens_with_proto(probe):
                    raise NotACheckpointError(_not_a_pickle(probe, exc), path=probe.path) from None
                found.failure(name, exc)
                return found
            joblib = read_as_joblib(data, start, probe.size, probe.path, decoded)
            if joblib and not joblib.problem and joblib.end != decoded.end:
                # pickle.loads read joblib's array bytes as opcodes and happened to get through
                found.pickles += [(name + label, d) for label, d in joblib.pickles]
                found.pickles.append((f"{name} (as pickle.loads reads it)", without_problems(decoded)))
                start, index = joblib.end, index + 1
                continue
            found.pickles.append((name, decoded))
            found.add_joblib(name, joblib)
            start, index = decoded.end, index + 1
    return found


def _not_a_pickle(probe: Probe, exc: PickleError) -> str:
    # Text whose first byte is an opcode's (`e`, `n`, `(` ...): say it is text.
    if text_start(probe.head) is not None:
        return not_a_checkpoint(probe.head)
    return f"not a checkpoint ({exc.message})"


def _opens_with_proto(probe: Probe) -> bool:
    return probe.head[:1] == b"\x80"


def _found_anything(exc: PickleError) -> bool:
    """Whether an unpickler does anything that matters before the error: a call, or the
    import of a name that reaches processes, files or evaluation. Text read as protocol 0
    (`import x` as INST, `cuda` and `fp16` on two lines as a GLOBAL) names at most
    harmless or impossible names (with spaces and colons) before it fails: not a pickle."""
    partial = exc.partial
    if partial is None:
        return False
    return bool(partial.calls) or any(
        _python_name(g.module) and _python_name(g.name) and gadget_label(g.module, g.name, False) is not None
        for g in partial.globals
    )


def _python_name(dotted: str) -> bool:
    return all(part.isidentifier() for part in dotted.split("."))


RAW_PICKLE_FORMAT = Format(
    RAW_PICKLE, lambda probe: probe.head[:1] != b"" and probe.head[0] in NAMES, pickles=raw_pickles, read=_read
)
