"""Matching a checkpoint's weights against the keys a model (or a reference) expects.

`compare_keys` gives what `model.load_state_dict(sd, strict=False)` would report
(missing and unexpected keys) and the size mismatches it would raise on.
`suggest_fixes` tries the fixes people reach for — strip `module.` (DataParallel),
`_orig_mod.` (torch.compile), `model.` (Lightning), add a prefix, take another root
in the file — and keeps those that make more keys match, best first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckpttool.checkpoint import Checkpoint
from ckpttool.weights import find_weights, resolve_path, walk, weights_of

Expected = dict[str, tuple[tuple[int, ...], str]]  # key -> (shape, dtype)
COMMON_PREFIXES = ("module.", "_orig_mod.", "model.")
MAX_ROOT_DEPTH = 2  # dots in a candidate root path: deeper ones are submodules


@dataclass
class KeyComparison:
    root: str | None
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[dict[str, Any]] = field(default_factory=list)
    dtype_mismatch: list[dict[str, Any]] = field(default_factory=list)
    matched: int = 0


def compare_keys(checkpoint: Checkpoint, root: str | None, expected: Expected) -> KeyComparison:
    weights = find_weights(checkpoint.root, root)
    found = {t.key: (t.tensor.shape, t.tensor.dtype) for t in weights.tensors}
    return compare(found, expected, weights.root)


def found_weights(checkpoint: Checkpoint, root: str | None) -> tuple[Expected, Any, str | None]:
    """The weights' names -> (shape, dtype), their `_metadata` if the file kept one, and the root."""
    weights = find_weights(checkpoint.root, root)
    found = {t.key: (t.tensor.shape, t.tensor.dtype) for t in weights.tensors}
    holder = resolve_path(checkpoint.root, weights.root) if weights.root is not None else None
    return found, getattr(holder, "metadata", None), weights.root


def compare(found: Expected, expected: Expected, root: str | None = None) -> KeyComparison:
    result = KeyComparison(root)
    result.missing = [k for k in expected if k not in found]
    result.unexpected = [k for k in found if k not in expected]
    for key, (shape, dtype) in found.items():
        if key not in expected:
            continue
        want_shape, want_dtype = expected[key]
        if tuple(shape) != tuple(want_shape):
            result.shape_mismatch.append({"key": key, "checkpoint": list(shape), "expected": list(want_shape)})
            continue
        result.matched += 1
        if dtype != want_dtype:
            result.dtype_mismatch.append({"key": key, "checkpoint": dtype, "expected": want_dtype})
    return result


def compare_with_model(model: Any, expected: Expected, found: Expected, metadata: Any) -> KeyComparison:
    """What `model.load_state_dict(sd, strict=False)` reports for the file's weights, by
    asking the model itself: its load hooks (BatchNorm's `num_batches_tracked`, weight
    norm's renamed keys) and the file's `_metadata` apply as they would for real. Meta
    tensors stand in for the data, so nothing is read or allocated. `expected` is the
    model's state_dict as built (loading replaces its tensors with the meta ones)."""
    import warnings
    from collections import OrderedDict

    import torch

    from ckpttool.tensordata import torch_dtype

    result = compare(found, expected)
    result.shape_mismatch = [m for m in result.shape_mismatch if not _torch_accepts_shape(m)]
    refused = {m["key"] for m in result.shape_mismatch}
    loadable: Any = OrderedDict(
        (k, torch.empty(shape, dtype=torch_dtype(dtype), device="meta"))
        for k, (shape, dtype) in found.items()
        if k not in refused
    )
    if metadata is not None:
        loadable._metadata = metadata
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keys = model.load_state_dict(loadable, strict=False, assign=True)
    except Exception:  # a model's own hooks may refuse meta tensors: keep the plain comparison
        return result
    result.missing = [k for k in keys.missing_keys if k not in refused]
    result.unexpected = list(keys.unexpected_keys)
    result.matched = len(expected) - len(result.missing) - len(result.shape_mismatch)
    return result


def _torch_accepts_shape(mismatch: dict[str, Any]) -> bool:
    # load_state_dict takes a [1]-shaped value for a 0-dim parameter (old checkpoints)
    return mismatch["expected"] == [] and mismatch["checkpoint"] == [1]


Judge = Callable[[Expected], KeyComparison]


def suggest_fixes(checkpoint: Checkpoint, judge: Judge, current: KeyComparison) -> list[dict[str, Any]]:
    """Fixes that make more keys match, as `judge` (torch through the model, or a plain
    comparison with a reference) sees it, best first."""
    weights = find_weights(checkpoint.root, current.root)
    found = {t.key: (t.tensor.shape, t.tensor.dtype) for t in weights.tensors}
    suggestions = [s for s in _renames(found, judge, current) if s is not None]
    suggestions += _other_roots(checkpoint, judge, current)
    return sorted(suggestions, key=lambda s: (-s["fixes"], s["missing_after"] + s["unexpected_after"]))


def _renames(found: Expected, judge: Judge, current: KeyComparison) -> list[dict[str, Any] | None]:
    strip = list(dict.fromkeys([*COMMON_PREFIXES, *_first_segments(current.unexpected)]))
    add = _first_segments(current.missing)
    out = [_try(f"strip prefix {p!r}", f"--strip-prefix {p}", _stripper(p), found, judge, current) for p in strip]
    out += [_try(f"add prefix {p!r}", f"--rename ^={p}", _adder(p), found, judge, current) for p in add]
    return out


def _other_roots(checkpoint: Checkpoint, judge: Judge, current: KeyComparison) -> list[dict[str, Any]]:
    out = []
    for path, node in walk(checkpoint.root):
        if not path or path == current.root or path.count(".") > MAX_ROOT_DEPTH:
            continue
        candidate = weights_of(node, path)
        if candidate is None:
            continue
        found = {t.key: (t.tensor.shape, t.tensor.dtype) for t in candidate.tensors}
        suggestion = _try(f"use the weights at {path!r}", f"--root {path}", lambda k: k, found, judge, current)
        if suggestion is not None:
            out.append(suggestion)
    return out


def _try(
    fix: str, option: str, rename: Callable[[str], str], found: Expected, judge: Judge, current: KeyComparison
) -> dict[str, Any] | None:
    renamed = {rename(k): v for k, v in found.items()}
    after = judge(renamed)
    fixes = after.matched - current.matched
    if fixes <= 0:
        return None
    return {
        "fix": fix,
        "option": option,
        "fixes": fixes,
        "missing_after": len(after.missing),
        "unexpected_after": len(after.unexpected),
    }


def _stripper(prefix: str) -> Callable[[str], str]:
    return lambda key: key[len(prefix) :] if key.startswith(prefix) else key


def _adder(prefix: str) -> Callable[[str], str]:
    return lambda key: prefix + key


def _first_segments(keys: list[str]) -> list[str]:
    return list(dict.fromkeys(k.split(".", 1)[0] + "." for k in keys if "." in k))
