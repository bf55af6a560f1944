"""Loading a checkpoint into torch objects without running anything from it.

The library's answer to `torch.load` for data: tensors are rebuilt from their bytes
(on cpu), containers and plain values are copied, a pickled `nn.Module` becomes the
state_dict its pickled tree holds. Other pickled instances stay inert
`PickledObject`s: ckpttool never imports their classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckpttool.checkpoint import PickledObject, TensorRef
from ckpttool.errors import WeightsNotFoundError
from ckpttool.formats import read_checkpoint
from ckpttool.tensordata import load_tensor
from ckpttool.weights import find_weights, module_state_dict

if TYPE_CHECKING:
    import torch


def load_state_dict(path: str, root: str | None = None) -> dict[str, torch.Tensor]:
    """The weights of any checkpoint, as `model.load_state_dict` takes them."""
    weights = find_weights(read_checkpoint(path).root, root)
    if weights.root is None:
        raise WeightsNotFoundError("no weights found; name them with root=", path=path)
    tensors: dict[int, torch.Tensor] = {}
    return {t.key: _tensor(t.tensor, tensors) for t in weights.tensors}


def load(path: str) -> Any:
    """The whole checkpoint: dicts, lists, numbers, tensors (parameters and `requires_grad`
    as torch.load gives them); modules as their state_dict (detached, as `state_dict()`)."""
    return _Materializer().value(read_checkpoint(path).root)


def _tensor(ref: TensorRef, cache: dict[int, torch.Tensor]) -> torch.Tensor:
    # One tensor per reference, so names tied in the file stay one tensor.
    if id(ref) not in cache:
        cache[id(ref)] = load_tensor(ref).clone() if ref.numel else load_tensor(ref)
    return cache[id(ref)]


def _as_saved(ref: TensorRef, tensor: torch.Tensor) -> torch.Tensor:
    """What torch.load gives for the tensor: an `nn.Parameter` for a saved parameter, and
    `requires_grad` as saved (a loss kept with its graph flag, a parameter frozen or not)."""
    import torch

    # Only floating and complex tensors can require grad: a file claiming it for integers is not obeyed.
    requires_grad = ref.requires_grad and (tensor.is_floating_point() or tensor.is_complex())
    if ref.kind == "parameter":
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(True) if requires_grad else tensor


class _Materializer:
    def __init__(self) -> None:
        self.tensors: dict[int, torch.Tensor] = {}
        self.saved: dict[int, torch.Tensor] = {}  # as torch.load gives them, one per reference
        self.memo: dict[int, Any] = {}

    def value(self, node: Any) -> Any:
        if isinstance(node, TensorRef):
            if id(node) not in self.saved:
                self.saved[id(node)] = _as_saved(node, _tensor(node, self.tensors).detach())
            return self.saved[id(node)]
        if isinstance(node, (dict, list, tuple, PickledObject)) and id(node) in self.memo:
            return self.memo[id(node)]
        if isinstance(node, dict):
            out: dict[Any, Any] = {}
            self.memo[id(node)] = out
            out.update((k, self.value(v)) for k, v in node.items())
            return out
        if isinstance(node, list):
            items: list[Any] = []
            self.memo[id(node)] = items
            items.extend(self.value(v) for v in node)
            return items
        if isinstance(node, tuple):
            return tuple(self.value(v) for v in node)
        if isinstance(node, PickledObject) and node.is_module:
            from collections import OrderedDict

            state = OrderedDict((t.key, _tensor(t.tensor, self.tensors)) for t in module_state_dict(node))
            self.memo[id(node)] = state
            return state
        return node
