"""DTensors as `torch.save` writes them: each rank's `model.state_dict()` of a model sharded
with FSDP2 (`fully_shard`) or tensor parallel, read in torch 2.14.1's sources.

`DTensor.__reduce_ex__` is Tensor's: `_rebuild_from_type_v2(_rebuild_wrapper_subclass,
DTensor, (DTensor, dtype, size, stride, offset, layout, device, requires_grad), (None,
{'_local_tensor': tensor, '_spec': DTensorSpec}))`. `_make_wrapper_subclass` allocates
the instance (C code; no `__new__`, no `__init__`); DTensor keeps Tensor's `__setstate__`,
so `_set_obj_state` sets its two slots. The spec is a dataclass (`DTensorSpec`, BUILD
updates its `__dict__`: its `__setattr__` is not reached) holding a `DeviceMesh`
(`__setstate__` updates `__dict__` and looks each of `_dim_group_names` up in c10d's
registry of process groups, by string), placements (`Shard`, `_StridedShard`,
`Replicate`, `Partial`: pybind classes whose C++ `__setstate__` reads ints and a
string from a dict), two NamedTuples (`TensorMeta`, `ShardOrderEntry`: `tuple.__new__`)
and the mesh's layout (`_MeshLayout`, `_FlatLayout`: frozen dataclasses, `__dict__`
updated). None has `__del__`.

Each class is vetted in exactly the form torch writes; a DTensor made any other way (by
NEWOBJ, around something that is no tensor, with other state) is an unknown call.
`import torch.distributed.tensor` puts every one of them on torch's weights_only allowlist
(`add_safe_globals` in torch/distributed/tensor/__init__.py and device_mesh.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ckpttool.pickle.allowlist import is_allowed
from ckpttool.pickle.objects import NEWOBJ, UNSET, Call, Global

Form = Callable[[tuple[Any, ...], Any], str | None]  # (NEWOBJ arguments, BUILD state) -> what does not fit

DTENSOR = "torch.distributed.tensor.DTensor"
_WRAPPER = "torch._utils._rebuild_wrapper_subclass"
_LAYOUT_OF = "torch.serialization._get_layout"
_MESH = "torch.distributed.device_mesh.DeviceMesh"
_SPEC = "torch.distributed.tensor._dtensor_spec."
PLACEMENTS = "torch.distributed.tensor.placement_types."
_LAYOUT = "torch.distributed._mesh_layout."
_LOCAL_TENSOR_BUILDERS = frozenset({"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3"})

# The module whose import puts each name on torch's weights_only allowlist.
REGISTERED_BY_IMPORT: dict[str, str] = dict.fromkeys(
    (DTENSOR, _MESH, f"{_SPEC}DTensorSpec", f"{_SPEC}TensorMeta", f"{_SPEC}ShardOrderEntry", f"{PLACEMENTS}Shard",
     f"{PLACEMENTS}_StridedShard", f"{PLACEMENTS}Replicate", f"{PLACEMENTS}Partial", f"{_LAYOUT}_FlatLayout",
     f"{_LAYOUT}_MeshLayout"),
    "torch.distributed.tensor",
)  # fmt: skip

_PLACEMENT_WHY = "a DTensor placement (pybind): its C++ __setstate__ reads {} from a dict; no __del__"
DTENSOR_CLASSES: dict[str, str] = {
    DTENSOR: (
        "a DTensor as torch.save writes one: _make_wrapper_subclass allocates it (C code), and its two slots are "
        "set to the local tensor and the spec; no __setstate__ of its own, no __del__"
    ),
    _MESH: (
        "a DTensor's device mesh: __setstate__ updates __dict__ and looks its process groups up by name (strings); "
        "no __del__"
    ),
    f"{_SPEC}DTensorSpec": "a DTensor's spec, a dataclass: BUILD updates its __dict__; no __setstate__, no __del__",
    f"{_SPEC}TensorMeta": "a NamedTuple of a DTensor's global shape, stride and dtype: tuple.__new__",
    f"{_SPEC}ShardOrderEntry": "a NamedTuple of a tensor dimension and mesh dimensions: tuple.__new__",
    f"{PLACEMENTS}Shard": _PLACEMENT_WHY.format("the dimension (an int)"),
    f"{PLACEMENTS}_StridedShard": _PLACEMENT_WHY.format("the dimension and split factor (ints)"),
    f"{PLACEMENTS}Replicate": _PLACEMENT_WHY.format("nothing"),
    f"{PLACEMENTS}Partial": _PLACEMENT_WHY.format("the reduce op's name (a string)"),
    **dict.fromkeys(
        (f"{_LAYOUT}_FlatLayout", f"{_LAYOUT}_MeshLayout"),
        "a device mesh's layout, a frozen dataclass: BUILD updates its __dict__; no __setstate__, no __del__",
    ),
}


def _made(value: Any, qualname: str) -> bool:
    """An object built as torch writes it: NEWOBJ of the class, no keywords."""
    return isinstance(value, Call) and value.kind == NEWOBJ and value.func_name == qualname and not value.kwargs


def int_tuple(value: Any) -> bool:
    """A tuple of ints only (a shape, a stride, a mesh coordinate)."""
    return type(value) is tuple and all(type(v) is int for v in value)


def _strings(value: Any, kind: type) -> bool:
    items: Any = value  # a list or tuple once its type is checked
    return type(value) is kind and all(type(v) is str for v in items)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _dtype(value: Any) -> bool:
    if not isinstance(value, Global) or value.module != "torch" or not is_allowed(value.qualname):
        return False
    return value.name.islower() and value.name != "device" and not value.name.startswith("per_")


def _fields(state: Any, fields: dict[str, Callable[[Any], bool]], required: frozenset[str]) -> bool:
    """A dict of attribute names, each of a known field with a value of its form."""
    if type(state) is not dict or not required <= state.keys() or not state.keys() <= fields.keys():
        return False
    return all(fields[key](value) for key, value in state.items())


def _state_form(
    expected: str, fields: dict[str, Callable[[Any], bool]], required: frozenset[str] | None = None
) -> Form:
    needed = frozenset(fields) if required is None else required

    def form(args: tuple[Any, ...], state: Any) -> str | None:
        return None if not args and _fields(state, fields, needed) else f"expected {expected}"

    return form


def _args_form(expected: str, check: Callable[[tuple[Any, ...]], bool]) -> Form:
    def form(args: tuple[Any, ...], state: Any) -> str | None:
        return None if state is UNSET and check(args) else f"expected {expected}"

    return form


def _mesh(value: Any) -> bool:
    return _made(value, _MESH)


def _placement(value: Any) -> bool:
    return any(_made(value, PLACEMENTS + name) for name in ("Shard", "_StridedShard", "Replicate", "Partial"))


def _size(value: Any) -> bool:
    is_size = isinstance(value, Call) and value.func_name == "torch.Size" and len(value.args) == 1
    return is_size and int_tuple(value.args[0])


def _is_int(value: Any) -> bool:
    return type(value) is int


_MESH_FIELDS: dict[str, Callable[[Any], bool]] = {
    "_device_type": lambda v: type(v) is str,
    "_layout": lambda v: _made(v, f"{_LAYOUT}_MeshLayout"),
    "_rank_map": lambda v: isinstance(v, Call) and v.func_name in _LOCAL_TENSOR_BUILDERS,
    "_mesh_dim_names": _optional(lambda v: _strings(v, tuple)),
    "_root_mesh": _optional(_mesh),
    "_flatten_rank_map": int_tuple,
    "_thread_id": _optional(_is_int),
    "_flatten_mapping": lambda v: type(v) is dict and all(type(k) is str and _mesh(m) for k, m in v.items()),
    "_dim_group_names": lambda v: _strings(v, list),
    "_rank": _is_int,
    "_coordinate_on_dim": _optional(int_tuple),
    "_hash": _optional(_is_int),
}
_SPEC_FIELDS: dict[str, Callable[[Any], bool]] = {
    "mesh": _mesh,
    "placements": lambda v: type(v) is tuple and bool(v) and all(_placement(p) for p in v),
    "tensor_meta": _optional(lambda v: _made(v, f"{_SPEC}TensorMeta")),
    "shard_order": _optional(lambda v: type(v) is tuple and all(_made(e, f"{_SPEC}ShardOrderEntry") for e in v)),
    "use_strided_shard_as_shard_order": _optional(lambda v: type(v) is bool),
    "_hash": _optional(_is_int),
}


def _not_rebuilt(args: tuple[Any, ...], state: Any) -> str:
    return "expected a DTensor only as torch.save writes one: _rebuild_from_type_v2(_rebuild_wrapper_subclass, ...)"


DTENSOR_FORMS: dict[str, Form] = {
    DTENSOR: _not_rebuilt,
    _MESH: _state_form(
        "DeviceMesh() with the state torch writes (device type, layout, rank map, group names as strings, ...)",
        _MESH_FIELDS,
        frozenset({"_device_type", "_layout", "_rank_map"}),
    ),
    f"{_SPEC}DTensorSpec": _state_form(
        "DTensorSpec() with the state mesh, placements, tensor_meta, shard_order", _SPEC_FIELDS,
        frozenset({"mesh", "placements"}),
    ),
    f"{_SPEC}TensorMeta": _args_form(
        "TensorMeta(torch.Size(ints), stride ints, dtype)",
        lambda a: len(a) == 3 and _size(a[0]) and int_tuple(a[1]) and _dtype(a[2]),
    ),
    f"{_SPEC}ShardOrderEntry": _args_form(
        "ShardOrderEntry(tensor dim, mesh dims)", lambda a: len(a) == 2 and _is_int(a[0]) and int_tuple(a[1])
    ),
    f"{PLACEMENTS}Shard": _state_form("Shard() with the state {'dim': int}", {"dim": _is_int}),
    f"{PLACEMENTS}_StridedShard": _state_form(
        "_StridedShard() with the state {'dim': int, 'split_factor': int}", {"dim": _is_int, "split_factor": _is_int}
    ),
    f"{PLACEMENTS}Replicate": _state_form("Replicate() with the state {}", {}),
    f"{PLACEMENTS}Partial": _state_form(
        "Partial() with the state {'reduce_op': str}", {"reduce_op": lambda v: type(v) is str}
    ),
    f"{_LAYOUT}_FlatLayout": _state_form(
        "_FlatLayout() with the state {'shape': ints, 'stride': ints}", {"shape": int_tuple, "stride": int_tuple}
    ),
    f"{_LAYOUT}_MeshLayout": _state_form(
        "_MeshLayout() with the state {'axes': (_FlatLayout, ...)}",
        {"axes": lambda v: type(v) is tuple and all(_made(a, f"{_LAYOUT}_FlatLayout") for a in v)},
    ),
}  # fmt: skip


def _wrapper_arguments(args: Any) -> bool:
    """(DTensor, dtype, size, stride, storage offset, layout, device, requires_grad), as
    Tensor._reduce_ex_internal writes them for a wrapper subclass."""
    if type(args) is not tuple or len(args) != 8:
        return False
    cls, dtype, size, stride, offset, layout, device, grad = args
    if not (isinstance(cls, Global) and cls.qualname == DTENSOR and _dtype(dtype)):
        return False
    if not (int_tuple(size) and int_tuple(stride)):
        return False
    return _is_int(offset) and type(grad) is bool and _one_string(layout, _LAYOUT_OF) and _device(device)


def _one_string(value: Any, qualname: str) -> bool:
    return (
        isinstance(value, Call) and value.func_name == qualname and len(value.args) == 1 and type(value.args[0]) is str
    )


def _device(value: Any) -> bool:
    """torch.device('cpu') or torch.device('cuda', 0), as a device pickles itself."""
    if not isinstance(value, Call) or value.func_name != "torch.device" or not 1 <= len(value.args) <= 2:
        return False
    return type(value.args[0]) is str and all(type(a) is int for a in value.args[1:])


def _slots(state: Any) -> bool:
    """(None, {'_local_tensor': a tensor torch.save wrote, '_spec': DTensorSpec})."""
    if type(state) is not tuple or len(state) != 2 or state[0] is not None or type(state[1]) is not dict:
        return False
    slots = state[1]
    local, spec = slots.get("_local_tensor"), slots.get("_spec")
    if slots.keys() != {"_local_tensor", "_spec"} or not isinstance(local, Call):
        return False
    plain = local.func_name in _LOCAL_TENSOR_BUILDERS and local.state is UNSET
    return plain and _made(spec, f"{_SPEC}DTensorSpec")


def rebuilt_dtensor_misfit(args: tuple[Any, ...], state: Any) -> str | None:
    """What does not fit in `_rebuild_from_type_v2(...)` of a DTensor (None: torch's own form)."""
    if len(args) != 4 or not all(isinstance(a, Global) for a in args[:2]) or state is not UNSET:
        return "expected _rebuild_from_type_v2(_rebuild_wrapper_subclass, DTensor, arguments, slots)"
    if args[0].qualname != _WRAPPER or args[1].qualname != DTENSOR:
        return "expected _rebuild_from_type_v2(_rebuild_wrapper_subclass, DTensor, arguments, slots)"
    if not _wrapper_arguments(args[2]):
        return "expected the wrapper's arguments (DTensor, dtype, size, stride, offset, layout, device, requires_grad)"
    if not _slots(args[3]):
        return "expected the slots (None, {'_local_tensor': a tensor, '_spec': DTensorSpec()})"
    return None
