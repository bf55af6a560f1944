"""Megatron-Core's `torch_dist` checkpoints: DCP folders with Megatron's layout.

Megatron-Core (and NeMo 2, whose `weights/` is such a folder) saves the sharded part
of a model's state through DCP under flat keys (`model.decoder.layers.mlp.linear_fc1.weight`,
`optimizer.state.exp_avg.model.…`), objects as bytes entries `KEY/shard_<offset>_<count>`,
and the values that are not sharded (iteration, args) in `common.pt` beside them (a
`torch.save` file) or, in newer releases, in the bytes entry `common_state/shard_0_1`.
`metadata.json` names the backend (`"sharded_backend": "torch_dist"`).

Here that layout becomes the state_dict Megatron's own `load` returns, with no code run:
tensors grouped by the section their keys start with (`model`, `optimizer`, ...), so the
model's weights are found under `model`, objects under their full keys, and the common
state merged in at the top (read as inert data by the torch-zip reader). Tensors only
Megatron's code can map back (dp_reshardable buffers, flattened_range) are named in
`Checkpoint.unconvertible`, for conversions to refuse.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ckpttool.checkpoint import Checkpoint
from ckpttool.errors import FormatError
from ckpttool.formats.dcp_metadata import DcpMetadata, dcp_folder

MEGATRON_METADATA = "metadata.json"
COMMON_NAME = "common.pt"
COMMON_ENTRY = "common_state/shard_0_1"  # newer releases: the common state as a DCP object
TORCH_DIST = "torch_dist"
SECTION = re.compile(r"model\d*|module|optimizer")
MODEL_SECTION = re.compile(r"(?:model\d*|module)\.")
DP_RESHARDABLE = "optimizer.distributed.dp_group_idx_"  # the distributed optimizer's flat buffers
MAX_METADATA_JSON = 1 << 20


def is_torch_dist(folder: str, meta: DcpMetadata) -> bool:
    """Written by Megatron-Core: its metadata.json names torch_dist, or `.metadata` holds its save plans."""
    return meta.save_plans > 0 or meta.mcore or backend(folder) == TORCH_DIST


def is_torch_dist_folder(path: str) -> bool:
    """A Megatron-Core checkpoint folder (or NeMo 2 checkpoint), by its metadata.json alone."""
    return backend(dcp_folder(path)) == TORCH_DIST


def backend(folder: str) -> str | None:
    """metadata.json's sharded_backend, or None when there is no such readable file."""
    try:
        with open(os.path.join(folder, MEGATRON_METADATA), "rb") as f:
            data = json.loads(f.read(MAX_METADATA_JSON))
    except (OSError, ValueError, RecursionError):  # unreadable, not JSON, nested past the parser
        return None
    value = data.get("sharded_backend") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def unconvertible(meta: DcpMetadata) -> dict[str, str]:
    """Why each tensor that only Megatron-Core's code can map back cannot be converted, by key."""
    out = {
        fqn: "a distributed optimizer's dp_reshardable flat buffer: which bytes belong to which parameter "
        "is Megatron-Core's bucket layout, which the checkpoint does not hold"
        for fqn in meta.tensors
        if fqn.startswith(DP_RESHARDABLE)
    }
    for fqn, shape in meta.reformulated.items():
        out[fqn] = (
            f"saved with flattened_range by Megatron-Core before 0.14: stored as {list(meta.tensors[fqn].shape)} "
            f"(grid of flattened local shards), not as its global shape {list(shape)}"
        )
    return out


def refuse_unconvertible(checkpoint: Checkpoint, fqns: list[str]) -> None:
    """A FormatError naming the first of `fqns` that cannot be converted, and why."""
    for fqn in fqns:
        why = checkpoint.unconvertible.get(fqn)
        if why is not None:
            raise FormatError(f"{fqn!r} cannot be converted: {why}", path=checkpoint.path)


def is_under(fqn: str, root: str | None) -> bool:
    """Whether the flat key lies under the weights root (every key when the root is the whole file)."""
    return not root or fqn == root or fqn.startswith(f"{root}.")


def common_path(folder: str) -> str | None:
    path = os.path.join(folder, COMMON_NAME)
    return path if os.path.isfile(path) else None


def megatron_root(values: dict[str, Any], meta: DcpMetadata, common: Any) -> tuple[dict[str, Any], list[str]]:
    """(the state_dict, anomalies): the tensors of each section Megatron-LM and NeMo prefix
    their keys with (`model.`, `model0.` per virtual pipeline stage, `module.`, `optimizer.`)
    grouped under it, every other key as it is, then the common state merged in where it
    names no sharded key. A model saved without a prefix stays flat: its weights are the
    whole folder."""
    root: dict[str, Any] = {}
    notes: list[str] = []
    grouped = any(MODEL_SECTION.match(fqn) for fqn in meta.tensors)
    for fqn, value in values.items():
        head, dot, rest = fqn.partition(".")
        if grouped and fqn in meta.tensors and dot and SECTION.fullmatch(head) and head not in values:
            group = root.setdefault(head, {})
            if isinstance(group, dict):
                group[rest] = value
                continue
        root[fqn] = value
    entry = values.get(COMMON_ENTRY)
    if isinstance(entry, list) and len(entry) == 1 and isinstance(entry[0], dict):
        common = entry[0] if common is None else common
    if isinstance(common, dict):
        _merge(root, common, "", notes)
    return root, notes


def _merge(into: dict[Any, Any], common: dict[Any, Any], where: str, notes: list[str]) -> None:
    for key, value in common.items():
        name = f"{where}{key}"
        if key not in into:
            into[key] = value
        elif isinstance(into[key], dict) and isinstance(value, dict):
            _merge(into[key], value, f"{name}.", notes)
        else:
            notes.append(f"{COMMON_NAME}'s {name!r} is also a sharded key: the sharded value is shown")


# -- optimizer state -----------------------------------------------------------------------------

OPTIMIZER, STATE = "optimizer", "state."


def optimizer_by_parameter(root: Any) -> dict[str, Any] | None:
    """Megatron-Core's optimizer state (`optimizer.state.<name>.<parameter key>`, a tensor
    shaped like the parameter) as an optimizer state_dict keyed by parameter key:
    `{'state': {key: {name: tensor}}, 'param_groups': [{'params': [keys], ...}]}`, the group's
    hyper-parameters taken from the first param group the common state holds; None when
    there is none."""
    section = root.get(OPTIMIZER) if isinstance(root, dict) else None
    if not isinstance(section, dict):
        return None
    state: dict[str, dict[str, Any]] = {}
    for key, value in section.items():
        name, dot, param = str(key).removeprefix(STATE).partition(".")
        if str(key).startswith(STATE) and dot and param:
            state.setdefault(param, {})[name] = value
    if not state:
        return None
    group = {k: v for k, v in _first_group(section).items() if k != "params"}
    return {"state": state, "param_groups": [{**group, "params": list(state)}]}


def _first_group(node: Any, depth: int = 0) -> dict[str, Any]:
    if not isinstance(node, dict) or depth > 8:
        return {}
    groups = node.get("param_groups")
    if isinstance(groups, list) and groups and isinstance(groups[0], dict):
        return groups[0]
    for value in node.values():
        found = _first_group(value, depth + 1)
        if found:
            return found
    return {}
