"""Rewriting a torch checkpoint's pickle and nothing else: storage locations (remap), weight keys (rekey)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckpttool.lazy import lazy_exports

if TYPE_CHECKING:
    from ckpttool.ops.rewrite.rekeying import RekeyReport, rekey
    from ckpttool.ops.rewrite.remapping import (
        LocationMap,
        RemapReport,
        map_location,
        parse_mapping,
        remap,
        rewrite_pickle,
    )

_EXPORTS = {
    "LocationMap": ".remapping",
    "RemapReport": ".remapping",
    "map_location": ".remapping",
    "parse_mapping": ".remapping",
    "remap": ".remapping",
    "rewrite_pickle": ".remapping",
    "RekeyReport": ".rekeying",
    "rekey": ".rekeying",
}
__all__ = [
    "LocationMap",
    "RekeyReport",
    "RemapReport",
    "map_location",
    "parse_mapping",
    "rekey",
    "remap",
    "rewrite_pickle",
]
__getattr__ = lazy_exports(__name__, _EXPORTS)
