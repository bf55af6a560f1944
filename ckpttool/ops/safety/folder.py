"""What `scan` reads of a folder: every file under it, recursively, each on its own.

Whatever `inspect` takes as a folder's checkpoint (its safetensors file, its index), a
loader may read any other file beside it: transformers reads `pytorch_model.bin` when
safetensors are off, and its Trainer `torch.load`s `training_args.bin`, `optimizer.pt`,
`scheduler.pt` and `rng_state.pth` on resume. So each file is scanned as `scan FILE`
scans it (with the same container caps). A checkpoint made of several files is one
entry, scanned as its loader reads it: a DCP folder (`.metadata` and its data files), a
sharded folder (its index and the shards the index names), a DeepSpeed run or tag folder
(`latest` and the tag's rank files); the other files beside it are entries of their own.

A symbolic link to a regular file is followed wherever its target lies, as a loader
follows it: a Hugging Face cache snapshot (`snapshots/<hash>/`) holds only links into
`../../blobs/`. The target's content is scanned under the link's name, and the entry
names the target. A link to a folder outside is not followed (reported, unreadable: the
files a loader would find there were never scanned); one inside points at files listed
anyway. Pipes, devices and broken or looping links are reported, not read.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Literal

from ckpttool.errors import CkptError
from ckpttool.formatnames import DCP_METADATA_FILE
from ckpttool.formats import OpenedFile, detect
from ckpttool.formats.deepspeed_files import LATEST, rank_files, tag_folder
from ckpttool.formats.sharded import find_index, load_index, shard_path

MAX_FILES = 10_000  # entries of one folder; past it, the rest is reported unscanned
DCP_DATA_SUFFIX = ".distcp"

ItemKind = Literal["file", "checkpoint", "skipped"]


@dataclass
class FolderItem:
    path: str
    kind: ItemKind  # a file to scan, a folder that is a checkpoint of several files, or a path not read
    reason: str = ""  # why a skipped path was not read
    target: str = ""  # the file a symbolic link resolves to, when `path` is one


def folder_items(root: str, opened: OpenedFile | None = None) -> list[FolderItem]:
    """Every path under `root` to scan, in a stable (sorted) order. `opened`: `root` as a
    command already opened it, whose probe tells its format without probing again."""
    top = os.path.realpath(root)
    items: list[FolderItem] = []
    covered: set[str] = set()  # the files of a checkpoint folder's entry

    def unlistable(exc: OSError) -> None:
        items.append(FolderItem(exc.filename or root, "skipped", f"cannot list: {exc.strerror or exc}"))

    for folder, dirs, files in os.walk(root, onerror=unlistable):
        dirs.sort()
        own = _checkpoint_files(folder, opened if opened is not None and same_path(opened.path, folder) else None)
        if own and not own <= covered:  # a tag folder already read through its run's `latest`
            items.append(FolderItem(folder, "checkpoint"))
            covered |= own
        names = [n for n in sorted(files) if os.path.normpath(os.path.join(folder, n)) not in covered]
        items.extend(_linked_folders(folder, dirs, top))
        items.extend(_classify(os.path.join(folder, name)) for name in names)
        if len(items) > MAX_FILES:
            reason = f"more than {MAX_FILES} files: the rest of the folder is not scanned"
            return [*items[:MAX_FILES], FolderItem(root, "skipped", reason)]
    return items


def _checkpoint_files(folder: str, opened: OpenedFile | None) -> set[str]:
    """The files of `folder` its checkpoint's loader reads together, when it is a DCP,
    sharded or DeepSpeed checkpoint; none otherwise (each file is then scanned on its own)."""
    try:
        several = os.path.isfile(os.path.join(folder, DCP_METADATA_FILE)) or find_index(folder) is not None
        several = several or tag_folder(folder) is not None
        if not several:  # a folder with one weights file: each file alone
            return set()
        kind = opened.kind() if opened is not None else detect(folder)
        if kind == "deepspeed":
            return _deepspeed_files(folder)
        if kind == "dcp":
            data = [n for n in os.listdir(folder) if n.endswith(DCP_DATA_SUFFIX)]
            return {os.path.normpath(os.path.join(folder, n)) for n in [DCP_METADATA_FILE, *data]}
        if kind is not None and kind.startswith("sharded"):
            index = find_index(folder)
            assert index is not None  # detected by it
            shards = {shard_path(folder, s, index) for s in load_index(index)["weight_map"].values()}
            return {os.path.normpath(p) for p in [index, *shards]}
    except (CkptError, OSError):  # a broken index: its files are scanned one by one
        pass
    return set()


def _deepspeed_files(folder: str) -> set[str]:
    """A run folder's `latest` and the rank files of the tag it names, or a tag folder's
    rank files: what its entry decodes. Other files there are entries of their own."""
    tag = tag_folder(folder)
    assert tag is not None  # detected by it
    files, _ = rank_files(tag)
    latest = [os.path.join(folder, LATEST)] if tag != folder else []
    return {os.path.normpath(p) for p in [*latest, *files]}


def _linked_folders(folder: str, dirs: list[str], top: str) -> list[FolderItem]:
    """os.walk does not descend through links: one inside points at files listed anyway."""
    linked = [os.path.join(folder, d) for d in dirs if os.path.islink(os.path.join(folder, d))]
    return [_outside(p) for p in linked if not _inside(p, top)]


def _classify(path: str) -> FolderItem:
    link = os.path.islink(path)
    try:
        mode = os.stat(path).st_mode  # through every link; a loop raises ELOOP
    except OSError as exc:
        broken = "a broken symbolic link" if link else "cannot read"
        return FolderItem(path, "skipped", f"{broken}: {exc.strerror or exc}")
    if not stat.S_ISREG(mode):  # a pipe or device would block or never end
        what = f"a symbolic link to {os.path.realpath(path)}, not" if link else "not"
        return FolderItem(path, "skipped", f"{what} a regular file: not read")
    return FolderItem(path, "file", target=os.path.realpath(path) if link else "")


def same_path(a: str, b: str) -> bool:
    return os.path.normpath(a) == os.path.normpath(b)


def _inside(path: str, top: str) -> bool:
    target = os.path.realpath(path)
    return os.path.commonpath([target, top]) == top


def _outside(path: str) -> FolderItem:
    where = os.path.realpath(path)
    reason = f"a symbolic link to the folder {where}, outside the folder: not followed (scan the target itself)"
    return FolderItem(path, "skipped", reason)
