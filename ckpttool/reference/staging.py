"""A set of files written out of sight and moved into its folder together, at the end.

`reference train` writes a whole fixture set (periodic checkpoints, every style, the
manifest) into a hidden staging folder on the destination's filesystem, and only when
all of it is written moves the files into the destination with `atomic.replace_all`:
the set lands whole or not at all. A failure or a stop signal (`ckpttool.signals`)
before that removes the staging folder, so the destination is left as it was: absent
if it did not exist, an existing folder's contents unchanged. A staging folder a killed
run left (SIGKILL) is removed by the next run staging there (`ckpttool.leftovers`).

Where the staging folder lives: inside an existing destination (the one place sure to
be on the same filesystem, even when the destination is a mount point, and writable
when its parent is not), otherwise beside it, in the nearest folder that exists. The
destination's missing folders are created only when the set lands.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ckpttool.atomic import created_folders, replace_all
from ckpttool.errors import UsageError
from ckpttool.leftovers import remove_leftovers, temp_prefix
from ckpttool.signals import held

STAGING_SUFFIX = ".ckpttool-staging"


@dataclass(frozen=True)
class StagedFolder:
    """`folder` is where to write; `land` moves the named files into `destination`."""

    destination: Path
    folder: Path

    def land(self, names: Sequence[str]) -> None:
        """Move `folder/NAME` to `destination/NAME` for each name, in order, all or none.

        Files of the same names in the destination are replaced (and put back if the
        landing fails); other files there are left alone. A folder of one of the names
        is never replaced: that would delete a user's folder.
        """
        clashes = [name for name in names if (self.destination / name).is_dir()]
        if clashes:
            clash = self.destination / clashes[0]
            raise UsageError(f"{clash} is a folder, where a fixture file goes; nothing was written")
        with created_folders(str(self.destination)):
            replace_all([(str(self.folder / name), str(self.destination / name)) for name in names])


@contextlib.contextmanager
def staged_folder(destination: Path) -> Iterator[StagedFolder]:
    """Yields an empty hidden folder for the set; it is removed when the block ends,
    however it ends (what `land` moved out of it is no longer in it)."""
    destination = Path(destination)
    base = _staging_base(destination)
    remove_leftovers(str(base), STAGING_SUFFIX)  # a killed run's staging folders
    folder: Path | None = None
    try:
        with held():  # the folder exists only once it is recorded for removal
            folder = Path(tempfile.mkdtemp(prefix=temp_prefix(destination.name), suffix=STAGING_SUFFIX, dir=base))
        yield StagedFolder(destination, folder)
    finally:
        if folder is not None:
            with held():
                shutil.rmtree(folder, ignore_errors=True)


def _staging_base(destination: Path) -> Path:
    """Where the staging folder goes; refuses a destination that cannot be a folder."""
    if destination.is_dir():
        return destination
    if destination.exists() or destination.is_symlink():
        raise UsageError(f"{destination} exists and is not a folder; name a folder for the fixtures")
    base = destination.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UsageError(f"{base} is not a folder; cannot create {destination}")
    return base
