"""Sparse tensors whose indices break their invariants.

torch.load rebuilds a sparse tensor with `check_invariants=False`; with weights_only=True
it then validates every one (`torch._utils._validate_loaded_sparse_tensors`) and refuses
the file when one fails, while weights_only=False and pickle.load hand it over unchecked,
and using it (`to_dense()`) reads and writes out of bounds: the process crashes, or its
memory is corrupted. The check is torch's own validation, run on the parts read from
their bytes, only for files whose pickles rebuild a sparse tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ckpttool.checkpoint import OpaqueCall, PickledObject, TensorRef
from ckpttool.errors import CkptError
from ckpttool.formats import OpenedFile
from ckpttool.pickle.state import Decoded

SPARSE_REBUILD = "torch._utils._rebuild_sparse_tensor"
_COMPRESSED = frozenset({"sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc"})


def rebuilds_sparse(pickles: Iterable[Decoded]) -> bool:
    return any(g.qualname == SPARSE_REBUILD for decoded in pickles for g in decoded.globals)


def invalid_sparse(opened: OpenedFile) -> list[str]:
    """Why each sparse tensor of the file fails torch's validation (empty when all pass, or
    when the file cannot be read as a checkpoint: its other findings say so)."""
    try:
        root = opened.checkpoint().root
        return [why for t in _sparse_tensors(root) if (why := _violation(t))]
    except CkptError:
        return []


def _sparse_tensors(root: Any) -> Iterator[TensorRef]:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, TensorRef):
            if node.layout != "strided":
                yield node
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, (PickledObject, OpaqueCall)):
            stack.extend((node.args, node.state, node.items or (), node.dictitems or {}))


def _violation(tensor: TensorRef) -> str | None:
    import torch  # only a file that rebuilds a sparse tensor pays for it, and for reading its parts

    from ckpttool.tensordata import load_tensor

    try:
        parts = [load_tensor(p) for p in (tensor.extra or {}).get("parts", [])]
    except CkptError as error:  # torch's indices are plain integer tensors: one ckpttool reads
        return f"a {tensor.layout} tensor whose parts cannot be read to check its invariants ({error})"
    coalesced = (tensor.extra or {}).get("coalesced")
    try:
        if tensor.layout == "sparse_coo" and len(parts) == 2:
            indices, values = parts
            torch._validate_sparse_coo_tensor_args(indices, values, tensor.shape, coalesced, check_pinning=False)
        elif tensor.layout in _COMPRESSED and len(parts) == 3:
            compressed, plain, values = parts
            layout = getattr(torch, tensor.layout)
            torch._validate_sparse_compressed_tensor_args(
                compressed, plain, values, tensor.shape, layout, check_pinning=False
            )
        else:
            return f"a {tensor.layout} tensor of {len(parts)} parts, which torch does not rebuild"
    except (RuntimeError, ValueError, TypeError, IndexError, OverflowError, NotImplementedError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return (
            f"a {tensor.layout} tensor breaks its invariants ({first}): torch.load(weights_only=True) refuses it; "
            "loaded without that check, torch's kernels trust them (an index past the size is read and written "
            "out of bounds)"
        )
    return None
