"""One data file of a DCP checkpoint (`__0_0.distcp`), named on its own.

A `.distcp` file holds every item one rank saved, one after another: tensors as raw
bytes, other entries as `torch.save` archives. Only the folder's `.metadata` says where
each item starts, so the file alone is neither read nor scanned (a scan fails closed,
exit 2); the answer names the folder to give instead.
"""

from __future__ import annotations

import os
from typing import NoReturn

from ckpttool.errors import UnknownFormatError
from ckpttool.formatnames import DCP_DATA, DCP_METADATA_FILE
from ckpttool.formats.format import Format, Probe


def _recognise(probe: Probe) -> bool:
    folder = os.path.dirname(os.path.abspath(probe.path))
    return (
        not probe.folder and probe.path.endswith(".distcp") and os.path.isfile(os.path.join(folder, DCP_METADATA_FILE))
    )


def _refuse(probe: Probe) -> NoReturn:
    folder = os.path.dirname(probe.path) or "."
    # only the folder's .metadata says where each item of this file starts
    raise UnknownFormatError(f"one rank's data of a DCP checkpoint: name its folder, {folder}", path=probe.path)


DCP_DATA_FORMAT = Format(DCP_DATA, _recognise, pickles=_refuse, read=_refuse)
