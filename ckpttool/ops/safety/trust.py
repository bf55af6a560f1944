"""The two places ckpttool lets torch unpickle a file.

`trusted_weights` is the `--trust` escape hatch: `torch.load(weights_only=False)` on a
source the user vouches for, refused when `scan` calls it dangerous unless forced.
`torch_accepts` loads a file ckpttool itself just wrote, with `weights_only=True`, to
prove torch reads it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckpttool.errors import FormatError, UnsafeFileError, VerificationError, WeightsNotFoundError
from ckpttool.weights import EMA_ROOTS, PREFERRED_ROOTS

if TYPE_CHECKING:
    import torch


def refuse_if_dangerous(path: str, force: bool) -> None:
    from ckpttool.ops.safety.scan import danger, scan_file

    found = danger(scan_file(path))
    if found is not None and not force:
        reason = found.reasons[0]
        raise UnsafeFileError(f"scan calls this file dangerous ({reason}); --trust needs --force to load it", path=path)


def trusted_load(path: str, force: bool, map_location: Any = "cpu") -> Any:
    import torch

    refuse_if_dangerous(path, force)
    try:
        return torch.load(path, weights_only=False, map_location=map_location)  # noqa: TID251 -- the --trust path
    except Exception as exc:  # whatever the file's own code raised
        raise FormatError(f"torch.load(weights_only=False) failed: {type(exc).__name__}: {exc}", path=path) from None


def trusted_weights(path: str, root: str | None, force: bool) -> tuple[dict[str, torch.Tensor], str]:
    obj = trusted_load(path, force)
    value, where = _locate(obj, root)
    tensors = _state_dict(value)
    if tensors is None:
        raise WeightsNotFoundError(f"nothing at {where!r} holds tensors", path=path)
    return tensors, where


def _locate(obj: Any, root: str | None) -> tuple[Any, str]:
    if root is not None:
        value = obj
        for part in filter(None, root.split(".")):
            value = value[part] if isinstance(value, dict) else getattr(value, part, None)
        return value, root
    if _state_dict(obj) is not None and not isinstance(obj, dict) or _is_tensor_dict(obj):
        return obj, ""
    for key in PREFERRED_ROOTS + EMA_ROOTS:
        if isinstance(obj, dict) and key in obj and _state_dict(obj[key]) is not None:
            return obj[key], key
    return obj, ""


def _is_tensor_dict(value: Any) -> bool:
    import torch

    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _state_dict(value: Any) -> dict[str, torch.Tensor] | None:
    import torch

    if isinstance(value, torch.nn.Module):
        return dict(value.state_dict())
    if isinstance(value, dict):
        tensors = {str(k): v for k, v in value.items() if isinstance(v, torch.Tensor)}
        return tensors or None
    return None


def torch_accepts(path: str, expected: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """torch.load(weights_only=True) reads the file, with the keys, dtypes and shapes planned.
    mmap=True: no tensor data is read here, so memory does not grow with the file."""
    import torch

    try:
        loaded = torch.load(path, weights_only=True, mmap=True, map_location="cpu")  # noqa: TID251 -- our own output
    except Exception as exc:
        raise VerificationError(f"torch.load(weights_only=True) refuses the output: {exc}") from None
    found = {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in loaded.items()}
    if found != expected:
        raise VerificationError("torch reads back other keys, dtypes or shapes than were written")
