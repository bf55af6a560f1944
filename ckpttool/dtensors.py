"""A DTensor in a rank's `torch.save(model.state_dict())` (FSDP2, tensor parallel), described:
the local shard it holds, as a TensorRef, with its place in the whole tensor
(`DTensorLayout`) read from the spec torch pickles beside it. Nothing is imported.

What the interpreter hands over for `_rebuild_from_type_v2(_rebuild_wrapper_subclass,
DTensor, wrapper_args, (None, {'_local_tensor': ..., '_spec': DTensorSpec}))`: the
wrapper's arguments (DTensor, dtype, global size, stride, offset, layout, device,
requires_grad) and the slots, each already interpreted.
"""

from __future__ import annotations

from math import prod
from typing import Any

from ckpttool.checkpoint import DTensorLayout, PickledObject, TensorRef
from ckpttool.pickle.vetted_dtensor import DTENSOR, PLACEMENTS, int_tuple


def rebuilt_dtensor(wrapper_args: Any, state: Any) -> TensorRef | None:
    """The local shard with its layout in `extra["dtensor"]`, or None when the arguments are
    not in the form torch writes (the scan says so)."""
    slots = state[1] if type(state) is tuple and len(state) == 2 and isinstance(state[1], dict) else {}
    local, spec = slots.get("_local_tensor"), slots.get("_spec")
    if type(wrapper_args) is not tuple or len(wrapper_args) != 8 or not isinstance(local, TensorRef):
        return None
    size, requires_grad = wrapper_args[2], wrapper_args[7]
    layout = _layout(size, spec) if isinstance(spec, PickledObject) else None
    if layout is None:
        return None
    return TensorRef(
        local.dtype, local.shape, local.stride, local.offset, local.storage, requires_grad is True, DTENSOR,
        local.layout, {**(local.extra or {}), "dtensor": layout}, local.meta_device,
    )  # fmt: skip


def _layout(size: Any, spec: PickledObject) -> DTensorLayout | None:
    fields = spec.attributes
    mesh, placements = fields.get("mesh"), fields.get("placements")
    if not (int_tuple(size) and isinstance(mesh, PickledObject) and type(placements) is tuple):
        return None
    named = tuple(placement_name(p) for p in placements)
    shape = _mesh_shape(mesh.attributes.get("_layout"))
    if None in named or shape is None or len(shape) != len(named):
        return None
    attrs = mesh.attributes
    names, coordinate = attrs.get("_mesh_dim_names"), attrs.get("_coordinate_on_dim")
    return DTensorLayout(
        size,
        tuple(n for n in named if n is not None),
        shape,
        names if type(names) is tuple and all(type(n) is str for n in names) else None,
        str(attrs.get("_device_type", "")),
        coordinate if int_tuple(coordinate) else None,
    )


def placement_name(placement: Any) -> str | None:
    """A placement as torch's repr writes it: `Shard(dim=0)`, `Replicate()`, `Partial(sum)`,
    `_StridedShard(dim=0, sf=2)`."""
    if not isinstance(placement, PickledObject) or not placement.cls.startswith(PLACEMENTS):
        return None
    kind, state = placement.cls.removeprefix(PLACEMENTS), placement.attributes
    dim, factor, op = state.get("dim"), state.get("split_factor"), state.get("reduce_op")
    if kind == "Shard" and type(dim) is int:
        return f"Shard(dim={dim})"
    if kind == "_StridedShard" and type(dim) is int and type(factor) is int:
        return f"_StridedShard(dim={dim}, sf={factor})"
    if kind == "Partial" and type(op) is str:
        return f"Partial({op})"
    return "Replicate()" if kind == "Replicate" else None


def _mesh_shape(layout: Any) -> tuple[int, ...] | None:
    """Each mesh dimension's size: the product of its flat layout's sizes."""
    axes = layout.attributes.get("axes") if isinstance(layout, PickledObject) else None
    if type(axes) is not tuple:
        return None
    shapes: list[tuple[int, ...]] = []
    for axis in axes:
        shape: Any = axis.attributes.get("shape") if isinstance(axis, PickledObject) else None
        if not int_tuple(shape):
            return None
        shapes.append(shape)
    return tuple(prod(s) for s in shapes)
