"""`--unstack`: Megatron-Core's stacked transformer layers, one tensor per layer.

Megatron-Core's `torch_dist` checkpoints hold each transformer layer's tensor of one name
stacked along a leading `num_layers` axis (`decoder.layers.mlp.linear_fc1.weight` of shape
`[L, ...]`). Unstacked, they are named as the model's own state_dict names them,
`decoder.layers.{i}.mlp.linear_fc1.weight`, each slice `[i]` of the stacked tensor. A key is
stacked when a `layers` component is followed by a name, not a layer index.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from ckpttool.checkpoint import Checkpoint, TensorRef
from ckpttool.formats.dcp import layer_of
from ckpttool.weights import join

_STACKED = re.compile(r"(?:^|\.)layers\.(?!\d+(?:\.|$))")
MAX_DEPTH = 64


def layer_names(key: str, shape: tuple[int, ...]) -> list[str] | None:
    """The per-layer names of a stacked tensor's slices, or None when the key is not stacked."""
    found = _STACKED.search(key)
    if found is None or not shape:
        return None
    head, tail = key[: found.end()], key[found.end() :]
    return [f"{head}{i}.{tail}" for i in range(shape[0])]


def unstack_checkpoint(checkpoint: Checkpoint) -> int:
    """Replaces every stacked tensor of the checkpoint's mappings by its layers, in place
    (each a reference that reads only its own slice, with the saved chunks that slice
    meets); returns how many were split."""
    return _Unstacker(checkpoint).visit(checkpoint.root, "", 0)


class _Unstacker:
    def __init__(self, checkpoint: Checkpoint) -> None:
        self.chunks = checkpoint.chunks
        self.seen: set[int] = set()

    def visit(self, node: Any, path: str, depth: int) -> int:
        if not isinstance(node, dict) or id(node) in self.seen or depth > MAX_DEPTH:
            return 0
        self.seen.add(id(node))
        items = list(node.items())
        split = sum(self.visit(v, join(path, str(k)), depth + 1) for k, v in items)
        if not any(_stacked(k, v) for k, v in items):
            return split
        node.clear()
        for key, value in items:
            names = _stacked(key, value)
            if names is None or not isinstance(value, TensorRef):
                node[key] = value
                continue
            node.update((name, layer_of(value, i)) for i, name in enumerate(names))
            self.split_chunks(join(path, key), [join(path, name) for name in names])
            split += 1
        return split

    def split_chunks(self, full: str, names: list[str]) -> None:
        for layer, name in enumerate(names):
            self.chunks[name] = [
                replace(c, offsets=c.offsets[1:], sizes=c.sizes[1:])
                for c in self.chunks.get(full, [])
                if c.offsets[0] <= layer < c.offsets[0] + c.sizes[0]
            ]


def _stacked(key: Any, value: Any) -> list[str] | None:
    if isinstance(key, str) and isinstance(value, TensorRef):
        return layer_names(key, value.shape)
    return None
