"""`--model SPEC`: build the user's model to compare a checkpoint against.

SPEC is `package.module:Name` or `path/to/file.py:Name`, where Name is a class or a
factory (`torchvision.models:resnet18`), called with the `--model-arg K=V` values.
Importing it is the user's explicit request, and the only import of user code
anywhere in ckpttool. The model is built on the meta device when it allows, so
even a large one costs no memory; only names, shapes and dtypes are used.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

from ckpttool.errors import ModelSpecError

if TYPE_CHECKING:
    import torch


def parse_model_args(pairs: tuple[str, ...]) -> dict[str, Any]:
    """K=V pairs; V is read as a Python literal (10, 0.5, True, (3, 3)) or kept as text."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ModelSpecError(f"--model-arg {pair!r}: expected NAME=VALUE")
        try:
            kwargs[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            kwargs[key] = raw
    return kwargs


def build_model(spec: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    import torch

    factory = _resolve(spec)
    try:
        with torch.device("meta"):
            model = factory(**kwargs)
    except Exception:  # some factories cannot build on meta (they load weights): build on cpu
        try:
            model = factory(**kwargs)
        except Exception as exc:
            raise ModelSpecError(f"{spec}({_show(kwargs)}) failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def expected_state(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    """model.state_dict() as names -> (shape, dtype)."""
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}


def parameter_names(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """What `model.parameters()` yields, in order (shared parameters once): the order an
    optimizer built from it numbers its parameters."""
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def _resolve(spec: str) -> Any:
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ModelSpecError(f"--model {spec!r}: expected package.module:Name or path/to/file.py:Name")
    module = _load_file(target) if target.endswith(".py") or os.sep in target else _import(target)
    value: Any = module
    for part in name.split("."):
        if not hasattr(value, part):
            raise ModelSpecError(f"--model {spec!r}: {target} has no {name}")
        value = getattr(value, part)
    if not callable(value):
        raise ModelSpecError(f"--model {spec!r}: {name} is not a class or function")
    return value


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise ModelSpecError(f"cannot import {name}: {type(exc).__name__}: {exc}") from None


def _load_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise ModelSpecError(f"no such file: {path}")
    name = f"ckpttool_model_{abs(hash(os.path.abspath(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelSpecError(f"cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelSpecError(f"{path} failed to import: {type(exc).__name__}: {exc}") from None
    return module


def _show(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
