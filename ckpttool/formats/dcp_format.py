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
from dataclasses import dataclass

from ckpttool.checkpoint import Checkpoint
from ckpttool.errors import CkptError, PickleError
from ckpttool.formatnames import DCP
from ckpttool.formats.dcp import is_dcp_folder, item_pickles, read_dcp
from ckpttool.formats.dcp_metadata import DcpMetadata, metadata_of, metadata_pickle
from ckpttool.formats.format import Format, Found, Probe
from ckpttool.pickle import Decoded, decode


def _recognise(probe: Probe) -> bool:
    return probe.folder and is_dcp_folder(probe.path)


def _read(probe: Probe) -> Checkpoint:
    shared = _metadata(probe)
    return read_dcp(probe.path, shared.meta if shared else None)


@dataclass(frozen=True)
class _Metadata:
    """`.metadata` decoded once per opening: the read and the scan of a folder share it."""

    name: str
    data: bytes
    decoded: Decoded
    meta: DcpMetadata


def _metadata(probe: Probe) -> _Metadata | None:
    """None when `.metadata` does not read as DCP metadata: the read and the scan then
    meet (and report) the failure on their own path."""
    if "dcp_metadata" not in probe.memo:
        try:
            name, data = metadata_pickle(probe.path)
            decoded = decode(data, source=os.path.join(probe.path, name))
            probe.memo["dcp_metadata"] = _Metadata(name, data, decoded, metadata_of(probe.path, decoded, len(data)))
        except CkptError:
            return None
    shared: _Metadata = probe.memo["dcp_metadata"]
    return shared


def dcp_pickles(probe: Probe) -> Found:
    found = Found()
    shared = _metadata(probe)
    if shared is not None:  # its first pickle as the read decoded it, then any after it
        found.pickles.append((shared.name, shared.decoded))
        source = os.path.join(probe.path, shared.name)
        _decode_all(found, shared.name, shared.data, source, shared.decoded.end, 1)
    streams = item_pickles(probe.path, shared.meta if shared else None)
    try:
        for name, data in streams:
            _decode_all(found, name, data, os.path.join(probe.path, name))
    except CkptError as exc:
        found.problems.append(f"the data files cannot be scanned: {exc.message}")
    return found


def _decode_all(found: Found, name: str, data: bytes, source: str, start: int = 0, index: int = 0) -> None:
    """Every pickle of the stream, one after another, as a stream of loads would see them."""
    while start < len(data):
        label = f"{name} pickle {index}" if index else name
        try:
            decoded = decode(data, start=start, source=source)
        except PickleError as exc:
            found.failure(label, exc)
            return
        found.pickles.append((label, decoded))
        start, index = decoded.end, index + 1


DCP_FORMAT = Format(DCP, _recognise, read=_read, pickles=dcp_pickles)
