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
from ckpttool.weights import find_weights, walk, weights_of

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


def suggest_fixes(checkpoint: Checkpoint, expected: Expected, current: KeyComparison) -> list[dict[str, Any]]:
    weights = find_weights(checkpoint.root, current.root)
    found = {t.key: (t.tensor.shape, t.tensor.dtype) for t in weights.tensors}
    suggestions = [s for s in _renames(found, expected, current) if s is not None]
    suggestions += _other_roots(checkpoint, expected, current)
    return sorted(suggestions, key=lambda s: (-s["fixes"], s["missing_after"] + s["unexpected_after"]))


def _renames(found: Expected, expected: Expected, current: KeyComparison) -> list[dict[str, Any] | None]:
    strip = list(dict.fromkeys([*COMMON_PREFIXES, *_first_segments(current.unexpected)]))
    add = _first_segments(current.missing)
    out = [_try(f"strip prefix {p!r}", f"--strip-prefix {p}", _stripper(p), found, expected, current) for p in strip]
    out += [_try(f"add prefix {p!r}", f"--rename ^={p}", _adder(p), found, expected, current) for p in add]
    return out


def _other_roots(checkpoint: Checkpoint, expected: Expected, current: KeyComparison) -> list[dict[str, Any]]:
    out = []
    for path, node in walk(checkpoint.root):
        if not path or path == current.root or path.count(".") > MAX_ROOT_DEPTH:
            continue
        candidate = weights_of(node, path)
        if candidate is None:
            continue
        found = {t.key: (t.tensor.shape, t.tensor.dtype) for t in candidate.tensors}
        suggestion = _try(f"use the weights at {path!r}", f"--root {path}", lambda k: k, found, expected, current)
        if suggestion is not None:
            out.append(suggestion)
    return out


def _try(
    fix: str, option: str, rename: Callable[[str], str], found: Expected, expected: Expected, current: KeyComparison
) -> dict[str, Any] | None:
    renamed = {rename(k): v for k, v in found.items()}
    after = compare(renamed, expected)
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
