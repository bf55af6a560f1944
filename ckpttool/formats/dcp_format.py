"""The DCP format as the registry sees it: recognised by a folder's `.metadata`, read by
`formats/dcp.py`, scanned pickle by pickle.

Scanning decodes `.metadata`, then every item's pickle in the data files: `dcp.load`
unpickles non-tensor entries with `torch.load(weights_only=False)`, so they can run code
as surely as `.metadata` can. When `.metadata` does not read as DCP metadata the items
cannot be found, and the scan fails closed: that is a problem (a dangerous verdict),
named after what `.metadata` holds.
"""

from __future__ import annotations

import os

from ckpttool.checkpoint import Checkpoint
from ckpttool.errors import CkptError, PickleError
from ckpttool.formats.dcp import is_dcp_folder, item_pickles, read_dcp
from ckpttool.formats.format import Format, Found, Probe
from ckpttool.pickle import decode


def _recognise(probe: Probe) -> bool:
    return probe.folder and is_dcp_folder(probe.path)


def _read(probe: Probe) -> Checkpoint:
    return read_dcp(probe.path)


def dcp_pickles(probe: Probe) -> Found:
    found = Found()
    streams = item_pickles(probe.path)
    try:
        for name, data in streams:
            _decode_all(found, name, data, os.path.join(probe.path, name))
    except CkptError as exc:
        found.problems.append(f"the data files cannot be scanned: {exc.message}")
    return found


def _decode_all(found: Found, name: str, data: bytes, source: str) -> None:
    """Every pickle of the stream, one after another, as a stream of loads would see them."""
    start, index = 0, 0
    while start < len(data):
        label = f"{name} pickle {index}" if index else name
        try:
            decoded = decode(data, start=start, source=source)
        except PickleError as exc:
            found.failure(label, exc)
            return
        found.pickles.append((label, decoded))
        start, index = decoded.end, index + 1


DCP_FORMAT = Format("dcp", _recognise, read=_read, pickles=dcp_pickles)
