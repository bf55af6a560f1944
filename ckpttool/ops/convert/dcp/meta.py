"""DCP's own `FileSystemReader`, handed metadata that was never unpickled.

`torch.distributed.checkpoint`'s `FileSystemReader.read_metadata` calls `pickle.load` on
the `.metadata` file, so a hostile file runs code before a single tensor is read. Here the
folder is first read by ckpttool's DCP reader (`formats/dcp.py`: `.metadata` through the
code-free pickle machine, every data file present, every item inside its file, every
chunk's stored dtype and shape the declared ones), and torch's `Metadata` is rebuilt from
that validated data (`formats/dcp_metadata.torch_metadata`). `SafeFileSystemReader` is
DCP's reader with only `read_metadata` replaced, so every other step of loading
(planning, resharding chunks into whole tensors, reading them) stays torch's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckpttool.formats.dcp import is_dcp_folder, read_dcp
from ckpttool.formats.dcp_metadata import dcp_folder, read_dcp_metadata, torch_metadata

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import Metadata

    from ckpttool.checkpoint import Checkpoint

__all__ = ["checked_torch_metadata", "is_dcp_folder", "read_checked", "safe_reader"]


def read_checked(folder: str) -> tuple[Checkpoint, Metadata]:
    """ckpttool's reading of the checkpoint and torch's `Metadata` of it. Reading it whole
    refuses a missing or truncated data file, or a chunk unlike its metadata, before DCP
    opens anything."""
    return read_dcp(folder), torch_metadata(read_dcp_metadata(folder))


def checked_torch_metadata(folder: str) -> Metadata:
    """torch's `Metadata` of a checkpoint ckpttool has read and checked whole (the folder's
    `.metadata` itself is read by `formats.dcp_metadata.read_dcp_metadata`, never unpickled)."""
    return read_checked(folder)[1]


def safe_reader(folder: str, metadata: Metadata | None = None) -> Any:
    """DCP's `FileSystemReader` whose metadata comes from `checked_torch_metadata` (or is given,
    read that way already)."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    known = metadata if metadata is not None else checked_torch_metadata(folder)

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
            if kwargs.get("rank") is not None:
                raise FileNotFoundError("per-rank metadata")  # only the global .metadata is read
            if known.storage_meta is None:
                known.storage_meta = StorageMeta()
            known.storage_meta.load_id = self.load_id
            return known

    return SafeFileSystemReader(dcp_folder(folder))
