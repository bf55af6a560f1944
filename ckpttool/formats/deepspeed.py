"""DeepSpeed ZeRO checkpoints: a run folder, tag folder or `latest`, read as one checkpoint.

Every rank file is a torch zip, read by ckpttool's own reader (nothing unpickled, nothing
imported, the folder's scripts never run). The weights under `module` are what the
model's `state_dict()` held, consolidated:

- trainable parameters from the fp32 master partitions of the optimizer files
  (`single_partition_of_fp32_groups` for ZeRO-1/2 and BF16_Optimizer, `fp32_flat_groups`
  for ZeRO-3), placed by `param_shapes` (`deepspeed_layout`);
- frozen parameters from the model states: whole in `module` (ZeRO-1/2), or one
  partition per rank in `frozen_param_fragments` (ZeRO-3);
- persistent buffers from rank 0's `module` (non-persistent ones were never saved);
- tied names (`shared_params`, alias → source) as the very tensor of their source.

A parameter held whole by one partition is a view of that partition's record (copied
as it is); one spread over ranks is a tensor whose record gathers its at most `world`
slices on demand, so memory is bounded by the largest parameter. The Adam moments are
named the same way under `optimizer` (`state` keyed by parameter name), and read only
when asked for.
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import replace
from math import prod
from typing import Any

from ckpttool.checkpoint import Checkpoint, OpaqueCall, TensorRef
from ckpttool.errors import FormatError
from ckpttool.formatnames import DEEPSPEED
from ckpttool.formats.deepspeed_files import (
    LATEST,
    ZeroFiles,
    rank_files,
    scripts_beside,
    tag_folder,
    zero_files,
)
from ckpttool.formats.deepspeed_layout import Layout, LayoutError, partitioned, zero3
from ckpttool.formats.deepspeed_slices import assemble, bind, is_flat, slice_of
from ckpttool.formats.format import Format, Found, Probe
from ckpttool.formats.torchzip import read_torch_zip

PARAMETER = "parameter"  # how a TensorRef says it was an nn.Parameter
ZERO3_STATE, PARTITIONED_STATE = "fp32_flat_groups", "single_partition_of_fp32_groups"
SUMMARY = ("zero_stage", "optimizer", "world_size", "precision", "master_weights")
_LEFT_OUT = frozenset(
    {"module", "optimizer", "param_shapes", "frozen_param_shapes", "frozen_param_fragments", "buffer_names"}
)


def read_deepspeed(path: str, probe: Probe | None = None) -> Checkpoint:
    """The ZeRO checkpoint `path` names: metadata only, no tensor data is read. `probe`:
    the folder's, whose rank files a scan of it then decodes no second time."""
    folder = tag_folder(path)
    if folder is None:
        raise FormatError("not a DeepSpeed ZeRO checkpoint folder", path=path)
    files = zero_files(folder)
    if not files.optim:
        return _without_zero(path, files, probe)
    models = [_rank_file(p, probe) for p in files.model]
    optims = [_rank_file(p, probe) for p in files.optim]
    states = [_zero_state(c) for c in optims]
    first = _dict(models[0].root, files.model[0], "model states")
    stage = _stage(states[0], files)
    layout = _layout(first, states, stage, files)
    masters = _per_rank(states, ZERO3_STATE if stage == 3 else PARTITIONED_STATE, files)
    weights = _weights(first, models, layout, masters, stage, files)
    optimizer = f"ZeRO-{stage}" if "zero_stage" in states[0] else "BF16_Optimizer"
    metadata = _metadata(first, states[0], stage, optimizer, files.world, files, weights)
    metadata["master_weights"] = "fp32 partitions (the weights shown), moments under optimizer"
    root = _root(metadata, weights, _optimizer(states, layout, files), first)
    return Checkpoint(
        path=path,
        format=DEEPSPEED,
        file_size=sum(c.file_size for c in models + optims),
        root=root,
        storages={f"{os.path.basename(c.path)}/{k}": s for c in models + optims for k, s in c.storages.items()},
        metadata=metadata,
        anomalies=[f"{os.path.basename(c.path)}: {a}" for c in models + optims for a in c.anomalies],
        files=files.model + files.optim,
    )


def _without_zero(path: str, files: ZeroFiles, probe: Probe | None) -> Checkpoint:
    """ZeRO stage 0: rank 0's model states hold the module as the model's state_dict() did
    and the optimizer's own state_dict (by parameter index: the file names no parameter)."""
    model = _rank_file(files.model[0], probe)
    first = _dict(model.root, files.model[0], "model states")
    weights = _dict(first.get("module"), files.model[0], "module")
    buffers = first.get("buffer_names")
    if isinstance(buffers, list):  # the rest of the module's state_dict are its parameters
        for name, tensor in weights.items():
            if isinstance(tensor, TensorRef) and name not in buffers:
                tensor.kind = PARAMETER
    world = _int(first.get("dp_world_size"))
    metadata = _metadata(first, {}, 0, "its own (no ZeRO)", world or 1, files, weights)
    metadata["master_weights"] = "the module's weights (no ZeRO)"
    root = _root(metadata, weights, first.get("optimizer"), first)
    storages = {f"{os.path.basename(model.path)}/{k}": s for k, s in model.storages.items()}
    anomalies = [f"{os.path.basename(model.path)}: {a}" for a in model.anomalies]
    size, byteorder = model.file_size, model.byteorder
    return Checkpoint(path, DEEPSPEED, size, root, storages, byteorder, metadata, anomalies, files.model)


def _root(metadata: dict[str, str], weights: dict[str, Any], optimizer: Any, first: dict[Any, Any]) -> dict[str, Any]:
    """What every stage's checkpoint holds: a summary, the weights, the optimizer's state,
    then rank 0's other entries (step counts, the config, the scheduler)."""
    summary = {k: int(metadata[k]) if metadata[k].isdigit() else metadata[k] for k in SUMMARY if k in metadata}
    root: dict[str, Any] = {"deepspeed": summary, "module": weights, "optimizer": optimizer}
    root.update((k, v) for k, v in first.items() if k not in _LEFT_OUT)
    return root


# -- the states --------------------------------------------------------------------------------------


def _dict(value: Any, path: str, what: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"{what} hold {type(value).__name__}, not the dict DeepSpeed saves", path=path)
    return value


def _zero_state(checkpoint: Checkpoint) -> dict[Any, Any]:
    root = _dict(checkpoint.root, checkpoint.path, "optimizer states")
    return _dict(root.get("optimizer_state_dict"), checkpoint.path, "optimizer_state_dict")


def _int(value: Any) -> int | None:
    """An int, or DeepSpeed's ZeroStageEnum(n) as the pickle holds it (an int enum)."""
    if isinstance(value, OpaqueCall) and len(value.args) == 1:
        value = value.args[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _stage(state: dict[Any, Any], files: ZeroFiles) -> int:
    """ZeRO's stage; BF16_Optimizer records none (its partitions are laid out as ZeRO-1's)."""
    if "zero_stage" not in state:
        if PARTITIONED_STATE in state:
            return 1  # BF16_Optimizer
        raise FormatError("optimizer states without zero_stage or fp32 partitions", path=files.optim[0])
    stage = _int(state["zero_stage"])
    if stage not in (1, 2, 3):
        raise FormatError(f"zero_stage {state['zero_stage']!r} is not 1, 2 or 3", path=files.optim[0])
    return stage


def _world(state: dict[Any, Any], files: ZeroFiles) -> None:
    counts = state.get("partition_count")
    values = counts if isinstance(counts, list) else [counts]
    numbers = [_int(v) for v in values]
    if not numbers or any(n is None for n in numbers):
        raise FormatError(f"partition_count {counts!r} is not a number of ranks", path=files.optim[0])
    if max(n for n in numbers if n is not None) != files.world:
        raise FormatError(
            f"partition_count is {counts!r} but the folder holds {files.world} optimizer state files",
            path=files.folder,
        )


def _per_rank(states: list[dict[Any, Any]], key: str, files: ZeroFiles) -> list[list[TensorRef]]:
    """`state[key]` of each rank: a list of flat 1-D tensors, one per group."""
    out = []
    for state, path in zip(states, files.optim, strict=True):
        tensors = state.get(key)
        if not isinstance(tensors, list) or not all(is_flat(t) for t in tensors):
            raise FormatError(f"{key} is not a list of flat tensors", path=path)
        out.append(tensors)
    if any(len(t) != len(out[0]) for t in out):
        raise FormatError(f"ranks hold different numbers of {key}", path=files.folder)
    return out


def _shapes(value: Any, path: str, key: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(value, dict):
        raise FormatError(f"{key} is not a dict of names to shapes", path=path)
    shapes = {}
    for name, shape in value.items():
        if isinstance(shape, OpaqueCall) and shape.func == "torch.Size" and not shape.args:
            shape = ()
        if (
            not isinstance(name, str)
            or not isinstance(shape, (tuple, list))
            or not all(_int(d) is not None for d in shape)
        ):
            raise FormatError(f"{key}: {name!r} has no shape", path=path)
        shapes[name] = tuple(int(d) for d in shape)
    return shapes


def _layout(first: dict[Any, Any], states: list[dict[Any, Any]], stage: int, files: ZeroFiles) -> Layout:
    _world(states[0], files)
    groups = first.get("param_shapes")
    if not isinstance(groups, list):
        raise FormatError("model states without param_shapes (one dict per parameter group)", path=files.model[0])
    shapes = [_shapes(g, files.model[0], "param_shapes") for g in groups]
    masters = _per_rank(states, ZERO3_STATE if stage == 3 else PARTITIONED_STATE, files)
    sizes = [[t.numel for t in rank] for rank in masters]
    try:
        if stage == 3:
            return zero3(shapes, sizes)
        if len(masters[0]) != len(shapes):
            raise LayoutError(f"{len(shapes)} parameter groups in param_shapes, {len(masters[0])} fp32 partitions")
        return partitioned(shapes, sizes, _paddings(states[0], files))
    except LayoutError as exc:
        raise FormatError(f"sizes do not add up: {exc}", path=files.folder) from None


def _paddings(state: dict[Any, Any], files: ZeroFiles) -> list[list[int]] | None:
    """`param_alignment_paddings` (DeepSpeed 0.19+): elements after each parameter, per group."""
    paddings = state.get("param_alignment_paddings")
    if paddings is None:
        return None
    if not isinstance(paddings, list) or not all(isinstance(g, list) for g in paddings):
        raise FormatError("param_alignment_paddings is not a list per parameter group", path=files.optim[0])
    numbers = [[_int(p) for p in group] for group in paddings]
    if any(n is None or n < 0 for group in numbers for n in group):
        raise FormatError("param_alignment_paddings holds something other than counts", path=files.optim[0])
    return [[n for n in group if n is not None] for group in numbers]


# -- the weights -------------------------------------------------------------------------------------


def _weights(
    first: dict[Any, Any],
    models: list[Checkpoint],
    layout: Layout,
    masters: list[list[TensorRef]],
    stage: int,
    files: ZeroFiles,
) -> dict[str, TensorRef]:
    module = _dict(first.get("module"), files.model[0], "module")
    trainable = {n: bind(n, layout.places[n], masters, s, files, PARAMETER) for n, s in layout.shapes.items()}
    params = {**trainable, **_frozen(first, models, stage, files)}
    buffers = set(first.get("buffer_names") or ())
    shared: dict[Any, Any] = first["shared_params"] if isinstance(first.get("shared_params"), dict) else {}
    weights: dict[str, TensorRef] = {}
    for name in list(module) + [n for n in params if n not in module]:
        value = module.get(name)
        if name in params:
            weights[name] = params[name]
        elif name in shared:
            continue  # a tie, named once its source is
        elif isinstance(value, TensorRef) and name in buffers:
            weights[str(name)] = value
        elif isinstance(value, TensorRef) and stage < 3:  # a ZeRO-1/2 frozen parameter, saved whole
            weights[str(name)] = replace(value, kind=PARAMETER)
    for alias, source in shared.items():
        if source in weights:
            weights[alias] = weights[source]
    return {name: weights[name] for name in list(module) + list(weights) if name in weights}


def _frozen(first: dict[Any, Any], models: list[Checkpoint], stage: int, files: ZeroFiles) -> dict[str, TensorRef]:
    """ZeRO-3's frozen parameters, one partition per rank's model states; ZeRO-1/2 keep them whole."""
    shapes = first.get("frozen_param_shapes")
    if stage < 3 or not isinstance(shapes, dict):
        return {}
    frozen_shapes = _shapes(shapes, files.model[0], "frozen_param_shapes")
    fragments = [_fragments(m) for m in models]
    out = {}
    world = len(models)
    for name, shape in frozen_shapes.items():
        numel, share = prod(shape), -(-prod(shape) // world)
        pieces = []
        for rank, held in enumerate(fragments):
            part, take = held.get(name), min(share, numel - rank * share)
            if take <= 0:
                continue
            if not is_flat(part) or part.numel < take:
                raise FormatError(
                    f"frozen parameter {name!r} has no partition of {share} elements", path=models[rank].path
                )
            pieces.append(slice_of(part, 0, take))
        out[name] = assemble(name, shape, pieces, files, PARAMETER)
    return out


def _fragments(model: Checkpoint) -> dict[Any, Any]:
    root = _dict(model.root, model.path, "model states")
    return _dict(root.get("frozen_param_fragments"), model.path, "frozen_param_fragments")


# -- the optimizer ------------------------------------------------------------------------------------


def _base_state(state: dict[Any, Any]) -> dict[Any, Any] | None:
    for key in ("base_optimizer_state", "optimizer_state_dict"):
        base = state.get(key)
        if isinstance(base, dict) and isinstance(base.get("state"), dict):
            return base
    return None


def _optimizer(states: list[dict[Any, Any]], layout: Layout, files: ZeroFiles) -> dict[str, Any] | None:
    """The inner optimizer's state by parameter name: each moment gathered like the weights."""
    bases = [_base_state(s) for s in states]
    if any(b is None for b in bases):
        return None
    per_rank = [b["state"] for b in bases if b is not None]
    state: dict[str, Any] = {}
    for name, places in layout.places.items():
        group = layout.groups[name]
        held = per_rank[0].get(group)
        if not isinstance(held, dict):
            continue
        entry: dict[str, Any] = {}
        for key, value in held.items():
            if not (is_flat(value) and value.numel > 1):
                entry[str(key)] = value
                continue
            moments = [_moment(rank_state, key) for rank_state in per_rank]
            with suppress(FormatError):  # a rank without this moment (no step taken): left out, weights still read
                entry[str(key)] = bind(f"{name}.{key}", places, moments, layout.shapes[name], files)
        state[name] = entry
    groups = []
    for group in bases[0]["param_groups"] if bases[0] is not None else []:
        if isinstance(group, dict):
            indices = set(group.get("params") or ())
            groups.append({**group, "params": [n for n, g in layout.groups.items() if g in indices]})
    return {"state": state, "param_groups": groups}


def _moment(rank_state: dict[Any, Any], key: Any) -> list[TensorRef]:
    """A rank's tensors of one moment, by flat group index (missing groups are empty)."""
    count = max((k for k in rank_state if isinstance(k, int)), default=-1) + 1
    out: list[TensorRef] = []
    for index in range(count):
        held = rank_state.get(index)
        value = held.get(key) if isinstance(held, dict) else None
        out.append(value if is_flat(value) else TensorRef("float32", (0,), (1,), 0, None))
    return out


# -- what inspect shows ------------------------------------------------------------------------------


def _metadata(
    first: dict[Any, Any],
    state: dict[Any, Any],
    stage: int,
    optimizer: str,
    world: int,
    files: ZeroFiles,
    weights: dict[str, Any],
) -> dict[str, str]:
    dtypes = sorted({t.dtype for t in weights.values() if isinstance(t, TensorRef)})
    config = first.get("ds_config")
    meta = {
        "zero_stage": str(stage),
        "optimizer": optimizer,
        "world_size": str(world),
        "weights_dtypes": ", ".join(dtypes),
        "ds_version": str(first.get("ds_version") or state.get("ds_version") or "?"),
        "global_steps": str(first.get("global_steps", "?")),
        "tag_folder": files.folder,
    }
    if isinstance(config, dict):
        precision = [k for k in ("bf16", "fp16") if isinstance(config.get(k), dict) and config[k].get("enabled")]
        meta["precision"] = precision[0] if precision else "fp32"
    return meta


# -- the format ---------------------------------------------------------------------------------------


def _recognise(probe: Probe) -> bool:
    if not probe.folder and os.path.basename(probe.path) != LATEST:
        return False
    folder = tag_folder(probe.path)
    if folder is not None:
        probe.memo["tag_folder"] = folder
    return folder is not None


def deepspeed_pickles(probe: Probe) -> Found:
    """Every rank file's pickles, named `file:pickle`; the consolidation scripts DeepSpeed
    copies beside the checkpoint are named as code that loading it never needs."""
    folder = probe.memo.get("tag_folder") or tag_folder(probe.path) or probe.path
    found = Found()
    names, refusal = rank_files(folder)
    if refusal is not None:  # a layout the reader refuses is no danger: every rank file is still scanned
        found.notes.append(f"not read as one ZeRO checkpoint ({refusal}); each .pt file in it is scanned")
    for path in names:
        found.add_member(probe, path, os.path.basename(path))
    found.notes.extend(
        f"{script}: DeepSpeed's consolidation script, Python code beside the checkpoint; ckpttool never runs it "
        "and loading the checkpoint never needs it"
        for script in scripts_beside(folder)
    )
    return found


def _rank_file(path: str, probe: Probe | None) -> Checkpoint:
    return read_torch_zip(path) if probe is None else read_torch_zip(path, probe.member(path).archive())


def _read(probe: Probe) -> Checkpoint:
    return read_deepspeed(probe.path, probe)


DEEPSPEED_FORMAT = Format(DEEPSPEED, _recognise, read=_read, pickles=deepspeed_pickles)
