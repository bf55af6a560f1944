"""Where `torch.save` records each storage, and saving as a GPU run would on any machine.

`torch.save` writes one location string per storage (`cpu`, `cuda:0`, ...), which it
gets by asking each tagger registered with `torch.serialization.register_package`,
lowest priority number first. A GPU save differs from a CPU save of the same values
only in those strings: the bytes are copied to host memory before they are written.
So a tagger registered ahead of torch's own "cpu" one (priority 10) that answers
`cuda:0` makes a CPU-trained run write exactly the files a GPU run writes. That lets
a machine without a GPU produce, and a CPU-only test suite check, GPU-saved fixtures.

A real GPU run keeps some optimizer state on the host: Adam's and AdamW's `step`
counters stay on the CPU unless the optimizer is `capturable` or `fused`. Those
storages keep "cpu" here too, so a training checkpoint names both locations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

# Ahead of torch's own taggers, of which "cpu" (priority 10) comes first.
_PRIORITY_AHEAD_OF_TORCH = 0


@dataclass(frozen=True)
class _Relocation:
    location: str
    # Identities (`UntypedStorage._cdata`) of storages that keep their own location.
    kept: frozenset[int] = field(default_factory=frozenset)


_active: list[_Relocation] = []
_registered = False


def _tag(storage: object) -> str | None:
    if not _active:
        return None  # torch's own taggers answer
    relocation = _active[-1]
    if isinstance(storage, torch.storage.TypedStorage):
        storage = storage._untyped_storage
    if isinstance(storage, torch.UntypedStorage) and storage._cdata in relocation.kept:
        return None
    return relocation.location


def _restore_nothing(_storage: object, _location: str) -> None:
    return None  # loading is left to torch's own deserializers


def _register_once() -> None:
    global _registered
    if not _registered:
        torch.serialization.register_package(_PRIORITY_AHEAD_OF_TORCH, _tag, _restore_nothing)
        _registered = True


@contextlib.contextmanager
def saved_as_located(location: str, keep: Iterable[torch.Tensor] = ()) -> Iterator[None]:
    """Inside, `torch.save` records every storage on `location`, except those of `keep`."""
    _register_once()
    kept = frozenset(tensor.untyped_storage()._cdata for tensor in keep)
    _active.append(_Relocation(location, kept))
    try:
        yield
    finally:
        _active.pop()


def host_side_state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer state a GPU run keeps on the CPU: tensor `step` counters."""
    if any(group.get("capturable") or group.get("fused") for group in optimizer.param_groups):
        return []  # these keep `step` beside the parameters, on the GPU
    return [state["step"] for state in optimizer.state.values() if isinstance(state.get("step"), torch.Tensor)]


def storage_locations(payload: object) -> list[str]:
    """The locations `torch.save(payload)` would write, sorted, each once.

    Asks torch's taggers (and any relocation in force), exactly as `torch.save` does.
    """
    return sorted({torch.serialization.location_tag(t.untyped_storage()) for t in _tensors(payload)})


def _tensors(value: object) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, nn.Module):
        # A pickled module carries every parameter and buffer, persistent or not.
        yield from value.parameters()
        yield from value.buffers()
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
