"""Finding the model weights in a checkpoint, the way people save them.

A checkpoint is a bare state_dict, a whole pickled `nn.Module`, or a training dict
that holds one of those under a conventional key (`state_dict`, `model_state_dict`,
`model`, `module`, Lightning's `state_dict`, ...). For a pickled module the
state_dict is derived from its pickled `__dict__` exactly as `Module.state_dict()`
builds it: parameters, then persistent buffers, then each child, skipping `None`s,
keys joined by dots, shared tensors listed under every name.

`walk` visits every node of the object tree once, with its dotted path; it never
follows a node twice, so shared references cannot multiply the work.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ckpttool.checkpoint import PickledObject, TensorRef
from ckpttool.errors import LimitError, WeightsNotFoundError

PREFERRED_ROOTS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
EMA_ROOTS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema")
MODULE_BOOKKEEPING = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"})
MAX_MODULE_DEPTH = 100
SCRIPT_MODULE_PREFIX = "__torch__."


@dataclass(slots=True)  # one per tensor and name, 10^5 of them
class NamedTensor:
    key: str
    tensor: TensorRef
    role: str | None = None  # "parameter" or "buffer" where known (see Weights.roles)

    @property
    def nbytes(self) -> int:
        return self.tensor.nbytes


@dataclass
class Weights:
    """The tensors `model.state_dict()` would hold, and where in the file they are."""

    root: str | None  # dotted path; "" for the whole file; None when there are no weights
    tensors: list[NamedTensor]
    kind: str  # "state_dict", "module", "script_module" or "none"
    alternatives: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # How each tensor's role was told: "module" (the pickled module tree), "declared" (a
    # TorchScript archive's code/), "file" (saved as nn.Parameter), "guessed" (key names).
    roles: str = "none"
    attributes: list[NamedTensor] = field(default_factory=list)  # TorchScript plain tensor attributes

    def mapping(self) -> dict[str, TensorRef]:
        return {t.key: t.tensor for t in self.tensors}


def join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


# -- modules ------------------------------------------------------------------------


def module_state_dict(module: PickledObject, prefix: str = "") -> list[NamedTensor]:
    out: list[NamedTensor] = []
    _collect_module(module, prefix, out, 0)
    return out


def _collect_module(module: PickledObject, prefix: str, out: list[NamedTensor], depth: int) -> None:
    if depth > MAX_MODULE_DEPTH:
        raise LimitError(f"module tree deeper than {MAX_MODULE_DEPTH} levels at {prefix!r}")
    attrs = module.attributes
    for name, value in _mapping(attrs.get("_parameters")).items():
        if isinstance(value, TensorRef):
            out.append(NamedTensor(prefix + str(name), value, "parameter"))
    skipped = _name_set(attrs.get("_non_persistent_buffers_set"))
    for name, value in _mapping(attrs.get("_buffers")).items():
        if isinstance(value, TensorRef) and name not in skipped:
            out.append(NamedTensor(prefix + str(name), value, "buffer"))
    for name, child in _mapping(attrs.get("_modules")).items():
        if isinstance(child, PickledObject) and child.is_module:
            _collect_module(child, f"{prefix}{name}.", out, depth + 1)


def script_state_dict(module: PickledObject) -> tuple[list[NamedTensor], list[NamedTensor]]:
    """`state_dict()` of a TorchScript module as `torch.jit.load(f).state_dict()` has it —
    declared parameters, then declared buffers, then each child module — and, apart, the
    plain tensor attributes that no state_dict holds."""
    weights: list[NamedTensor] = []
    attributes: list[NamedTensor] = []
    stack: list[tuple[PickledObject, str, int]] = [(module, "", 0)]
    while stack:
        node, prefix, depth = stack.pop()
        if depth > MAX_MODULE_DEPTH:
            raise LimitError(f"module tree deeper than {MAX_MODULE_DEPTH} levels at {prefix!r}")
        declared = node.declared
        assert declared is not None
        attrs = {str(k): v for k, v in node.attributes.items()}
        for names, role in ((declared.parameters, "parameter"), (declared.buffers, "buffer")):
            weights.extend(NamedTensor(prefix + n, v, role) for n, v in attrs.items() if n in names and _is_tensor(v))
        children = []
        for name, value in attrs.items():
            if _is_script_module(value):
                children.append((value, f"{prefix}{name}.", depth + 1))
            elif name not in declared.parameters and name not in declared.buffers:
                attributes.extend(NamedTensor(t.key, t.tensor) for t in _prefixed(all_tensors(value), prefix + name))
        stack.extend(reversed(children))
    return weights, attributes


def _is_tensor(value: Any) -> bool:
    return isinstance(value, TensorRef)


def _is_script_module(value: Any) -> bool:
    return isinstance(value, PickledObject) and value.declared is not None and value.declared.is_module


def _prefixed(tensors: list[NamedTensor], prefix: str) -> list[NamedTensor]:
    return [NamedTensor(join(prefix, t.key) if t.key else prefix, t.tensor) for t in tensors]


def module_parameters(module: PickledObject) -> list[NamedTensor]:
    """`named_parameters()` of a pickled module: parameters only, each shared one once."""
    out: list[NamedTensor] = []
    seen: set[int] = set()  # parameters and modules, each visited once as torch does
    stack: list[tuple[PickledObject, str, int]] = [(module, "", 0)]
    while stack:
        node, prefix, depth = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if depth > MAX_MODULE_DEPTH:
            raise LimitError(f"module tree deeper than {MAX_MODULE_DEPTH} levels at {prefix!r}")
        attrs = node.attributes
        for name, value in _mapping(attrs.get("_parameters")).items():
            if isinstance(value, TensorRef) and id(value) not in seen:
                seen.add(id(value))
                out.append(NamedTensor(prefix + str(name), value))
        children = [
            (c, f"{prefix}{n}.", depth + 1)
            for n, c in _mapping(attrs.get("_modules")).items()
            if isinstance(c, PickledObject) and c.is_module
        ]
        stack.extend(reversed(children))
    return out


def _mapping(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _name_set(value: Any) -> set[Any]:
    return set(value) if isinstance(value, (set, frozenset, list, tuple)) else set()


# -- state dicts -----------------------------------------------------------------------


def is_tensor_mapping(value: Any) -> bool:
    """A state_dict: string keys, at least one tensor, and nothing else but `_extra_state`s."""
    if not isinstance(value, dict) or not value:
        return False
    has_tensor = False
    for key, item in value.items():
        if not isinstance(key, str):
            return False
        if isinstance(item, TensorRef):
            has_tensor = True
        elif not key.endswith("_extra_state"):
            return False
    return has_tensor


def weights_of(value: Any, root: str) -> Weights | None:
    if isinstance(value, PickledObject) and value.is_module:
        return Weights(root, module_state_dict(value), "module", roles="module")
    if _is_script_module(value):
        weights, attributes = script_state_dict(value)
        return Weights(root, weights, "script_module", roles="declared", attributes=attributes)
    if isinstance(value, PickledObject) and value.cls.startswith(SCRIPT_MODULE_PREFIX):
        # No declaration in code/ to go by: every tensor, parameters, buffers and attributes alike.
        note = "the archive's code/ does not declare this module: parameters, buffers and attributes not told apart"
        return Weights(root, all_tensors(value), "script_module", notes=[note])
    if is_tensor_mapping(value):
        return state_dict_weights(root, [NamedTensor(k, v) for k, v in value.items() if isinstance(v, TensorRef)])
    return None


# Buffers that torch's own modules register, by the last part of their state_dict key.
BUFFER_NAMES = frozenset({"running_mean", "running_var", "num_batches_tracked"})


def state_dict_weights(root: str | None, tensors: list[NamedTensor], notes: list[str] | None = None) -> Weights:
    """A state_dict's tensors with their roles: told by the file when it kept parameters
    as `nn.Parameter` (`state_dict(keep_vars=True)`), otherwise guessed."""
    told = any(t.tensor.kind == "parameter" for t in tensors)
    for t in tensors:
        t.role = _told_role(t) if told else guess_role(t.key, t.tensor)
    return Weights(root, tensors, "state_dict", notes=notes or [], roles="file" if told else "guessed")


def _told_role(t: NamedTensor) -> str:
    return "parameter" if t.tensor.kind == "parameter" else "buffer"


def guess_role(key: str, tensor: TensorRef) -> str:
    """BatchNorm's running statistics and counter, and any tensor that cannot be a trainable
    parameter (integer or bool), are buffers; every other tensor is taken for a parameter."""
    if key.rsplit(".", 1)[-1] in BUFFER_NAMES:
        return "buffer"
    return "parameter" if _is_floating(tensor) else "buffer"


def find_weights(obj: Any, override: str | None = None) -> Weights:
    """The weights root: `override` when given, else the conventional places, else a search."""
    if override is not None:
        return _weights_at(obj, override)
    found = weights_of(obj, "")
    if found is None and isinstance(obj, dict):
        found = _conventional(obj, "")
    if found is None:
        found = _search(obj)
    if found is None:
        if is_optimizer_state(obj):
            return Weights(None, [], "none", notes=[OPTIMIZER_FILE])
        return Weights(None, [], "none", notes=[] if all_tensors(obj) else [NO_TENSORS])
    found.alternatives = [p for p in _alternatives(obj) if p != found.root]
    return found


OPTIMIZER_FILE = "the file is an optimizer's state_dict, no model's weights: `ckpttool optimizer` shows it"
# A scheduler's state_dict, training arguments: --root has nothing to name.
NO_TENSORS = "the file holds no tensors"


def _conventional(obj: dict[Any, Any], prefix: str) -> Weights | None:
    for key in PREFERRED_ROOTS + EMA_ROOTS:
        if key in obj:
            found = weights_of(obj[key], join(prefix, key))
            if found is None and isinstance(obj[key], dict) and not prefix:
                found = _conventional(obj[key], key)
            if found is not None:
                return found
    return None


def is_optimizer_state(node: Any) -> bool:
    """`optimizer.state_dict()`: a `state` mapping and a list of `param_groups` mappings."""
    return (
        isinstance(node, dict)
        and isinstance(node.get("state"), dict)
        and isinstance(node.get("param_groups"), list)
        and all(isinstance(g, dict) for g in node["param_groups"])
    )


def _is_floating(tensor: TensorRef) -> bool:
    return tensor.dtype.startswith(("float", "complex", "bfloat"))


def _search(obj: Any) -> Weights | None:
    """First module or state_dict anywhere, else the mapping holding the most tensors, one
    of them floating: a mapping of other values and integer tensors only is no model's
    weights but a record (the RNG states in HF Trainer's `rng_state.pth` and accelerate's
    `random_states_0.pkl`: `torch.get_rng_state()`'s uint8 bytes beside Python's and numpy's).
    An optimizer's state is never searched: each parameter's `{step, exp_avg, exp_avg_sq}`
    looks like a state_dict, but is no model's weights (HF Trainer's `optimizer.pt`,
    accelerate's `optimizer.bin`, a training dict whose weights come after it)."""
    best: tuple[int, str, dict[Any, Any]] | None = None
    optimizers: list[str] = []  # paths of optimizer states met; walk goes depth first
    for path, node in walk(obj):
        if any(o == "" or path == o or path.startswith(o + ".") for o in optimizers):
            continue
        if is_optimizer_state(node):
            optimizers.append(path)
            continue
        found = weights_of(node, path) if path else None
        if found is not None:
            return found
        if isinstance(node, dict):
            held = [v for v in node.values() if isinstance(v, TensorRef)]
            if any(_is_floating(t) for t in held) and (best is None or len(held) > best[0]):
                best = (len(held), path, node)
    if best is None:
        return None
    _, path, node = best
    tensors = [NamedTensor(str(k), v) for k, v in node.items() if isinstance(v, TensorRef)]
    return state_dict_weights(path, tensors, ["weights taken from a mapping that also holds other values"])


def _alternatives(obj: Any) -> list[str]:
    if not isinstance(obj, dict):
        return []
    return [k for k in PREFERRED_ROOTS + EMA_ROOTS if k in obj and weights_of(obj[k], k) is not None]


def _weights_at(obj: Any, path: str) -> Weights:
    node = resolve_path(obj, path)
    found = weights_of(node, path)
    if found is None and isinstance(node, dict):
        tensors = [NamedTensor(str(k), v) for k, v in node.items() if isinstance(v, TensorRef)]
        if tensors:
            found = state_dict_weights(path, tensors)
    if found is None:
        raise WeightsNotFoundError(_no_weights_at(node, path))
    return found


_NESTED_SHOWN = 3


def _no_weights_at(node: Any, path: str) -> str:
    """Why `path` gives no weights, truthfully: nothing tensor-like, or tensors only nested
    deeper, such as an optimizer's `state.N.exp_avg` (a state, not weights to load)."""
    nested = all_tensors(node)
    if not nested:
        return f"--root {path!r} holds no tensors"
    examples = ", ".join(t.key for t in nested[:_NESTED_SHOWN]) + (", ..." if len(nested) > _NESTED_SHOWN else "")
    count = f"{len(nested):,} tensor{'s' if len(nested) != 1 else ''}"
    if is_optimizer_state(node):
        return (
            f"--root {path!r} is an optimizer state ({count}: {examples}), not a state_dict of weights; "
            "`ckpttool optimizer` shows it per parameter, `ckpttool inspect --all` lists its tensors"
        )
    return (
        f"--root {path!r} is no state_dict of weights: its {count} are nested deeper ({examples}); "
        "give the --root of the mapping that holds them, or `ckpttool inspect --all` lists every tensor"
    )


def resolve_path(obj: Any, path: str) -> Any:
    """Follow a dotted path; keys may themselves contain dots (`state_dict.conv1.weight`)."""
    if path == "":
        return obj
    result = _resolve(obj, path.split("."))
    if result is _MISSING:
        raise WeightsNotFoundError(f"nothing at {path!r} in the checkpoint")
    return result


_MISSING = object()


def _resolve(obj: Any, parts: list[str]) -> Any:
    if not parts:
        return obj
    for k in range(1, len(parts) + 1):
        child = _child(obj, ".".join(parts[:k]))
        if child is not _MISSING:
            result = _resolve(child, parts[k:])
            if result is not _MISSING:
                return result
    return _MISSING


def _child(obj: Any, name: str) -> Any:
    for key, value in _children(obj):
        if str(key) == name:
            return value
    return _MISSING


# -- walking -----------------------------------------------------------------------------


def _children(node: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(node, dict):
        yield from node.items()
    elif isinstance(node, (list, tuple)):
        yield from enumerate(node)
    elif isinstance(node, PickledObject):
        yield from _object_children(node)


def _object_children(obj: PickledObject) -> Iterator[tuple[Any, Any]]:
    attrs = obj.attributes
    if obj.is_module:
        # Address parameters, buffers and children by their state_dict names.
        yield from _mapping(attrs.get("_parameters")).items()
        yield from _mapping(attrs.get("_buffers")).items()
        yield from _mapping(attrs.get("_modules")).items()
        yield from ((k, v) for k, v in attrs.items() if k not in MODULE_BOOKKEEPING)
        return
    yield from attrs.items()
    if obj.dictitems:
        yield from obj.dictitems.items()
    if obj.items:
        yield from enumerate(obj.items)
    if obj.args:
        yield from ((f"args{i}", a) for i, a in enumerate(obj.args))


# Exact types that never have children: a 50,000-tensor state_dict is mostly these.
_LEAF_TYPES = frozenset({TensorRef, str, int, float, bool, bytes, type(None)})


def walk(root: Any) -> Iterator[tuple[str, Any]]:
    """Every node once, depth first in file order, with its dotted path."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, node = stack.pop()
        if type(node) in _LEAF_TYPES:
            yield path, node
            continue
        if isinstance(node, (dict, list, tuple, PickledObject)):
            if id(node) in seen:
                continue
            seen.add(id(node))
        yield path, node
        pairs = node.items() if isinstance(node, dict) else _children(node)
        children = [(f"{path}.{k}", v) for k, v in pairs] if path else [(str(k), v) for k, v in pairs]
        children.reverse()
        stack.extend(children)


def all_tensors(root: Any) -> list[NamedTensor]:
    """Every tensor in the file, under each name it has (containers are visited once)."""
    return [NamedTensor(path, node) for path, node in walk(root) if isinstance(node, TensorRef)]
