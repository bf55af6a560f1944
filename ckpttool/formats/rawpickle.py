"""A plain pickle file (often named `.bin` or `.pkl`), decoded without executing it."""

from __future__ import annotations

import mmap
import os
from typing import Any

from ckpttool.checkpoint import Checkpoint, OpaqueCall
from ckpttool.errors import FormatError
from ckpttool.interpret import Interpreter
from ckpttool.pickle import Decoded, decode


def read_raw_pickle(path: str, seen: list[tuple[str, Decoded]] | None = None) -> Checkpoint:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError) as exc:
            raise FormatError(f"cannot map the file: {exc}", path=path) from None
        with data:
            decoded = decode(data, source=path)
    if seen is not None:
        seen.append(("pickle", decoded))
    root = Interpreter(_no_storages, path).value(decoded.value)
    anomalies = []
    if decoded.end < size:
        anomalies.append(f"{size - decoded.end} bytes follow the pickle's STOP (another pickle?)")
    return Checkpoint(path, "raw-pickle", size, root, anomalies=anomalies, files=[path])


def _no_storages(pid: Any) -> Any:
    # Outside torch's formats a persistent id refers to nothing ckpttool can read.
    return OpaqueCall("persistent_load", (pid,))
