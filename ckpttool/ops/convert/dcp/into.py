"""`convert` into and out of distributed checkpoints (DCP), through torch.distributed.checkpoint.

Into DCP (`--to dcp`): one `dcp.save` call with DCP's own `FileSystemWriter` and a
`DefaultSavePlanner` whose state_dict holds shape-only placeholders (meta tensors). DCP
plans the whole checkpoint from them (one `.metadata`, one plan, exactly what it would
write for the real tensors), and asks the planner for each tensor's data through
`resolve_data` only when its writer reaches it; the planner reads that one tensor from
the source then. With one writer thread DCP's CPU loader resolves one item at a time,
so memory stays at one tensor. Several `save` calls into one folder would not do: each
writes its own `.metadata` and the last one wins.

Out of DCP (a DCP folder as SRC): `dcp/export.py`. `convert_dcp` sends each conversion the
right way.

Every output is written to a hidden temporary file or folder beside DST, verified, and
renamed into place only then. Under torchrun each rank takes a share (tensors into DCP,
shards out of it), the ranks agree on success, and rank 0 lands the result.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from ckpttool.atomic import TEMP_SUFFIX, clear_leftovers, replace_all
from ckpttool.errors import (
    FileAccessError,
    OutputExistsError,
    UsageError,
    VerificationError,
)
from ckpttool.formats.dcp_megatron import is_torch_dist_folder
from ckpttool.leftovers import temp_prefix
from ckpttool.ops.convert.dcp.export import convert_from_dcp
from ckpttool.ops.convert.dcp.groups import Stopped, groups, inside_dcp, load_group
from ckpttool.ops.convert.dcp.meta import checked_torch_metadata, is_dcp_folder
from ckpttool.ops.convert.dcp.ranks import Ranks, together
from ckpttool.ops.convert.plan import (
    ConvertOptions,
    ConvertReport,
    OutputTensor,
    plan_outputs,
    weight_sources,
)
from ckpttool.ops.convert.targets import DCP, PTH
from ckpttool.progress import Progress
from ckpttool.signals import held, stop_pending
from ckpttool.tensordata import cast, tensor_bytes, torch_dtype

# -- into DCP ----------------------------------------------------------------------------------


def convert_to_dcp(src: str, dst: str, options: ConvertOptions, progress: Progress) -> ConvertReport:
    _refuse_options(options, {"--shard-size": options.shard_size, "--dedupe": options.dedupe,
                              "--metadata": options.metadata})  # fmt: skip
    if is_dcp_folder(src) and not is_torch_dist_folder(src):  # Megatron's layout becomes plain DCP
        raise UsageError(f"{src} is a DCP checkpoint already")
    ranks = options.ranks
    sources, weights_root, notes = weight_sources(src, options)
    outputs = plan_outputs(sources, options, notes)
    _check_folder_destination(src, dst, options.force)
    mine = ranks.share(outputs, lambda o: o.nbytes)
    progress.start(sum(o.nbytes for o in mine))
    temp = ranks.broadcast(_temp_folder(dst) if ranks.leader else None)
    try:
        together(ranks, lambda: _save(temp, mine, ranks, progress))
        together(ranks, lambda: _verify_dcp(temp, mine))
        together(ranks, lambda: _land_folder(temp, dst) if ranks.leader else None)
    except BaseException:
        if ranks.leader:
            with held():
                shutil.rmtree(temp, ignore_errors=True)
        raise
    return ConvertReport(
        source=src,
        outputs=[dst],
        format=DCP,
        weights_root=weights_root,
        tensors=len(outputs),
        bytes=sum(o.nbytes for o in outputs),
        cast=sum(o.dtype != o.source.dtype for o in outputs),
        notes=notes,
    )


def _refuse_options(options: ConvertOptions, given: dict[str, Any]) -> None:
    clashes = [name for name, value in given.items() if value]
    if clashes:
        raise UsageError(f"--to dcp does not combine with {', '.join(clashes)}")


def _check_folder_destination(src: str, dst: str, force: bool) -> None:
    if os.path.exists(dst):
        if os.path.exists(src) and os.path.samefile(src, dst):
            raise UsageError(f"{dst} is the source itself; the source is never modified")
        if not force:
            raise OutputExistsError(f"{dst} exists; pass --force to replace it")
        if not (is_dcp_folder(dst) or (os.path.isdir(dst) and not os.listdir(dst))):
            # --force replaces a checkpoint, never a folder of other things
            raise UsageError(f"{dst} exists and is not a DCP checkpoint or an empty folder; it is not replaced")
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise FileAccessError(f"folder {parent} does not exist")


def _temp_folder(dst: str) -> str:
    parent, name = os.path.split(os.path.abspath(dst))
    clear_leftovers(parent)
    with held():
        temp = tempfile.mkdtemp(prefix=temp_prefix(name), suffix=TEMP_SUFFIX, dir=parent)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temp, 0o777 & ~mask)  # mkdtemp makes 0700 folders
    return temp


def _save(folder: str, outputs: list[OutputTensor], ranks: Ranks, progress: Progress) -> None:
    import torch
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    from torch.distributed.checkpoint.state_dict_saver import save

    placeholders = {o.name: torch.empty(o.source.shape, dtype=torch_dtype(o.dtype), device="meta") for o in outputs}
    # No fsync, like every other ckpttool output: the rename is atomic, durability is the filesystem's.
    writer = FileSystemWriter(folder, sync_files=False, overwrite=False)
    with inside_dcp():
        save(placeholders, storage_writer=writer, planner=_planner(outputs, progress), no_dist=not ranks.distributed)


def _planner(outputs: list[OutputTensor], progress: Progress) -> Any:
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    by_name = {o.name: o for o in outputs}

    class SourcePlanner(DefaultSavePlanner):
        """DCP's planner; a tensor's data is read from the source when DCP writes it."""

        def resolve_data(self, write_item: Any) -> Any:
            if stop_pending():
                raise Stopped()
            output = by_name[write_item.index.fqn]
            tensor = cast(output.source.tensor(), output.dtype).contiguous()
            progress.advance(output.nbytes)
            return tensor

    return SourcePlanner()


def _verify_dcp(folder: str, outputs: list[OutputTensor]) -> None:
    """What DCP loads back from the folder is the source (or exactly its cast), byte for byte."""
    metadata = checked_torch_metadata(folder)
    for group in groups(outputs, lambda o: o.nbytes):
        loaded = load_group(folder, metadata, {o.name: (o.dtype, o.source.shape) for o in group})
        for output in group:
            if tensor_bytes(loaded[output.name]) != output.expected():
                raise VerificationError(f"tensor {output.name!r} does not read back equal to the source", path=folder)


def _land_folder(temp: str, dst: str) -> None:
    """The temporary folder becomes DST; a replaced checkpoint is removed only after."""
    replace_all([(temp, dst)])


def convert_dcp(src: str, dst: str, options: ConvertOptions, progress: Progress) -> ConvertReport | None:
    """The DCP side of convert, or None when neither SRC nor the output is DCP."""
    if options.to == DCP:
        return convert_to_dcp(src, dst, options, progress)
    if is_dcp_folder(src):
        if options.trust:
            raise UsageError("--trust does not apply to a DCP checkpoint: it is read without running code")
        return convert_from_dcp(src, dst, options, progress)
    if options.ranks.distributed:
        # Every rank would write the same file: only DCP conversions are split across ranks.
        raise UsageError("under torchrun only conversions into or out of a DCP folder are split; run this one alone")
    return None


__all__ = ["DCP", "PTH", "convert_dcp", "convert_from_dcp", "convert_to_dcp", "groups", "load_group"]
