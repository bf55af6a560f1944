"""DTensor rank files: the committed ones (fixtures/dtensor, written by torch on 2 and 4 gloo
ranks by fixtures/dtensor_generate.py), their ground truth from torch.load, and one DTensor
written opcode by opcode in torch 2.14.1's form, whose parts a test can swap for others.

The ground truth is loaded in a child process: `import torch.distributed.tensor` adds
DTensor's classes (and every exception class) to torch's weights_only allowlist for good,
which would change what other tests' `torch.load` accepts.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.builders import Op, Raw, TensorSpec, rebuild_tensor, torch_zip, value
from support.judging import call, glob, new, text

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "dtensor"
RANK_FILES = sorted(FIXTURES.glob("*/*.pt"))

_TRUTH = r"""
import json, logging, sys, torch
logging.disable(logging.WARNING)  # DeviceMesh warns that no process group exists here
refused = {}
for path in sys.argv[1:]:
    try:
        torch.load(path, weights_only=True)
    except Exception as exc:
        refused[path] = str(exc)
import torch.distributed.tensor
from torch.distributed.tensor import DTensor

def describe(value):
    if isinstance(value, DTensor):
        local = value.to_local()
        mesh = value.device_mesh
        return {"dtensor": True, "dtype": str(local.dtype).removeprefix("torch."), "shape": list(local.shape),
                "stride": list(local.stride()), "values": local.double().flatten().tolist(),
                "global_shape": list(value.shape), "placements": [repr(p) for p in value.placements],
                "mesh_shape": list(mesh.shape), "mesh_dim_names": list(mesh.mesh_dim_names or []),
                "coordinate": mesh.get_coordinate()}
    if isinstance(value, torch.Tensor):
        return {"dtensor": False, "dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape),
                "values": value.double().flatten().tolist()}
    return None

def flat(prefix, value, out):
    if isinstance(value, dict):
        for k, v in value.items():
            flat(f"{prefix}{k}.", v, out)
    elif isinstance(value, (list, tuple)) and not isinstance(value, torch.Tensor):
        for i, v in enumerate(value):
            flat(f"{prefix}{i}.", v, out)
    elif describe(value) is not None:
        out[prefix[:-1]] = describe(value)

truth = {}
for path in sys.argv[1:]:
    out = {}
    flat("", torch.load(path, weights_only=True), out)
    truth[path] = out
print(json.dumps({"refused": refused, "truth": truth}))
"""


def ground_truth(paths: list[Path]) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(why torch.load(weights_only=True) refuses each file before the import, what it loads
    after it: every tensor by dotted key)."""
    done = subprocess.run(
        [sys.executable, "-c", _TRUTH, *map(str, paths)], capture_output=True, text=True, check=True, timeout=300
    )
    found = json.loads(done.stdout)
    return found["refused"], found["truth"]


# -- one DTensor, opcode by opcode --------------------------------------------------------------

_SPEC = "torch.distributed.tensor._dtensor_spec."
_PLACEMENTS = "torch.distributed.tensor.placement_types."
_LAYOUT = "torch.distributed._mesh_layout."
MESH = "torch.distributed.device_mesh.DeviceMesh"
DTENSOR = "torch.distributed.tensor.DTensor"
LOCAL = TensorSpec("local", "0", 6, (2, 3), (3, 1))
_RANK_MAP = TensorSpec("rank_map", "1", 2, (2,), (1,), storage_type=("torch", "IntStorage"))
RECORDS = {"0": struct.pack("<6f", 0, 1, 2, 3, 4, 5), "1": struct.pack("<2i", 0, 1)}


def built(cls: str, state: Any, *args: bytes) -> bytes:
    """cls.__new__(cls, *args), then BUILD with `state`."""
    return new(cls, *args) + value(state) + Op.BUILD


def mesh_state(**changes: Any) -> dict[str, Any]:
    flat = built(f"{_LAYOUT}_FlatLayout", {"shape": (2,), "stride": (1,)})
    state = {
        "_device_type": "cpu",
        "_layout": Raw(built(f"{_LAYOUT}_MeshLayout", {"axes": (Raw(flat),)})),
        "_rank_map": Raw(rebuild_tensor(_RANK_MAP)),
        "_mesh_dim_names": None,
        "_root_mesh": None,
        "_flatten_rank_map": (0, 1),
        "_thread_id": None,
        "_flatten_mapping": {},
        "_dim_group_names": ["0"],
        "_rank": 0,
        "_coordinate_on_dim": (0,),
        "_hash": 7550170420111186132,
    }
    state.update(changes)
    return state


def shard(dim: Any = 0) -> bytes:
    return built(f"{_PLACEMENTS}Shard", {"dim": dim})


def spec_state(mesh: bytes | None = None, **changes: Any) -> dict[str, Any]:
    meta = new(f"{_SPEC}TensorMeta", call("torch.Size", value((4, 3))), value((3, 1)), glob("torch.float32"))
    state = {
        "mesh": Raw(mesh if mesh is not None else built(MESH, mesh_state())),
        "placements": (Raw(shard()),),
        "tensor_meta": Raw(meta),
        "shard_order": (Raw(new(f"{_SPEC}ShardOrderEntry", value(0), value((0,)))),),
        "use_strided_shard_as_shard_order": False,
        "_hash": -5647106644020457572,
    }
    state.update(changes)
    return state


def wrapper_arguments(cls: str = DTENSOR) -> tuple[Any, ...]:
    """`_rebuild_wrapper_subclass`'s arguments for a 4 x 3 float32 tensor of class `cls`."""
    return (
        Raw(glob(cls)), Raw(glob("torch.float32")), (4, 3), (3, 1), 0,
        Raw(call("torch.serialization._get_layout", text("torch.strided"))), Raw(call("torch.device", text("cpu"))),
        False,
    )  # fmt: skip


def dtensor(
    local: bytes | None = None,
    spec: bytes | None = None,
    cls: str = DTENSOR,
    slots: Any = None,
    after: bytes = b"",
    new_type: str = DTENSOR,
) -> bytes:
    """`_rebuild_from_type_v2(_rebuild_wrapper_subclass, new_type, (cls, ...), (None, slots))`,
    a 4 x 3 float32 DTensor sharded by rows whose local shard is LOCAL; `after` follows it
    (a BUILD on the result, say)."""
    wrapper_args = wrapper_arguments(cls)
    if slots is None:
        slots = {
            "_local_tensor": Raw(local if local is not None else rebuild_tensor(LOCAL)),
            "_spec": Raw(spec if spec is not None else built(f"{_SPEC}DTensorSpec", spec_state())),
        }
    args = (Raw(glob("torch._utils._rebuild_wrapper_subclass")), Raw(glob(new_type)), wrapper_args, (None, slots))
    return glob("torch._tensor._rebuild_from_type_v2") + value(args) + Op.REDUCE + after


def state_dict_file(entry: bytes, **more: bytes) -> bytes:
    """A torch zip whose data.pkl is `{'w': entry, **more}` (each value pickled in that
    order), with the two records the DTensor names."""
    items = b"".join(text(key) + ops for key, ops in {"w": entry, **more}.items())
    return torch_zip(Op.PROTO + b"\x02" + Op.EMPTY_DICT + Op.MARK + items + Op.SETITEMS + Op.STOP, RECORDS)
