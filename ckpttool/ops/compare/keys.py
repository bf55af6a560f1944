"""Matching a checkpoint's weights against the keys a model (or a reference) expects.

`compare_keys` gives what `model.load_state_dict(sd, strict=False)` would report
(missing and unexpected keys) and the size mismatches it would raise on.
`suggest_fixes` tries the fixes people reach for — strip `module.` (DataParallel),
`_orig_mod.` (torch.compile), `model.` (Lightning) or a stack of them
(`_orig_mod.module.`), add a prefix, take another root in the file — and keeps those
that make more keys match, best first. `Allowance` holds the `--allow-missing` /
`--allow-unexpected` globs: keys a warm start leaves out on purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from ckpttool.checkpoint import Checkpoint
from ckpttool.weights import Weights, find_weights, resolve_path, walk, weights_of

if TYPE_CHECKING:
    import torch

Expected = dict[str, tuple[tuple[int, ...], str]]  # key -> (shape, dtype)
COMMON_PREFIXES = ("module.", "_orig_mod.", "model.")
WRAPPERS = frozenset(p.rstrip(".") for p in COMMON_PREFIXES)  # segments that wrappers stack
MAX_ROOT_DEPTH = 2  # dots in a candidate root path: deeper ones are submodules


@dataclass
class KeyComparison:
    root: str | None
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[dict[str, Any]] = field(default_factory=list)
    dtype_mismatch: list[dict[str, Any]] = field(default_factory=list)
    matched: int = 0  # expected keys that load: present, with a shape torch accepts
    found: int = 0  # keys in the file's weights

    @property
    def found_matched(self) -> int:
        """The file's keys that load: neither unexpected nor of the wrong shape."""
        return self.found - len(self.unexpected) - len(self.shape_mismatch)


@dataclass
class Suggestion:
    """A convert option that makes more keys match, and what is left after it."""

    fix: str  # in words: "strip prefix 'module.'"
    option: tuple[str, str]  # ("--strip-prefix", "module."), ("--rename", "^=backbone."), ("--root", "ema")
    fixes: int  # more expected keys that load
    missing_after: int
    unexpected_after: int
    shape_mismatch_after: int
    passes: bool  # the key check passes after it (allowances included)
    command: str = ""  # the whole command to paste, once the caller knows the file

    @property
    def option_text(self) -> str:
        return " ".join(self.option)


@dataclass(frozen=True)
class Allowance:
    """`--allow-missing` / `--allow-unexpected` globs (fnmatch: `*` crosses dots)."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()

    def missing_ok(self, key: str) -> bool:
        return any(fnmatchcase(key, glob) for glob in self.missing)

    def unexpected_ok(self, key: str) -> bool:
        return any(fnmatchcase(key, glob) for glob in self.unexpected)

    def passes(self, keys: KeyComparison) -> bool:
        """No key difference left that the globs do not allow."""
        return (
            not keys.shape_mismatch
            and all(self.missing_ok(k) for k in keys.missing)
            and all(self.unexpected_ok(k) for k in keys.unexpected)
        )


def found_weights(checkpoint: Checkpoint, root: str | None) -> tuple[Expected, Any, Weights]:
    """The weights' names -> (shape, dtype), their `_metadata` if the file kept one, and where they are."""
    weights = find_weights(checkpoint.root, root)
    found = {t.key: (t.tensor.shape, t.tensor.dtype) for t in weights.tensors}
    holder = resolve_path(checkpoint.root, weights.root) if weights.root is not None else None
    return found, getattr(holder, "metadata", None), weights


def compare(found: Expected, expected: Expected, root: str | None = None) -> KeyComparison:
    result = KeyComparison(root, found=len(found))
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


def compare_with_model(model: torch.nn.Module, expected: Expected, found: Expected, metadata: Any) -> KeyComparison:
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
    return bool(mismatch["expected"] == [] and mismatch["checkpoint"] == [1])


Judge = Callable[[Expected], KeyComparison]


def suggest_fixes(
    checkpoint: Checkpoint, judge: Judge, current: KeyComparison, allow: Allowance = Allowance()
) -> list[Suggestion]:
    """Fixes that make more keys match, as `judge` (torch through the model, or a plain
    comparison with a reference) sees it, best first: those after which the check passes,
    then by keys fixed, then by fewest differences left."""
    weights = find_weights(checkpoint.root, current.root)
    found = {t.key: (t.tensor.shape, t.tensor.dtype) for t in weights.tensors}
    tried = [s for s in _renames(found, judge, current, allow) if s is not None]
    tried += _other_roots(checkpoint, judge, current, allow)
    return sorted(tried, key=lambda s: (not s.passes, -s.fixes, s.missing_after + s.unexpected_after))


def _renames(found: Expected, judge: Judge, current: KeyComparison, allow: Allowance) -> list[Suggestion | None]:
    strip = list(dict.fromkeys([*COMMON_PREFIXES, *strip_candidates(current.unexpected)]))
    add = _first_segments(current.missing)
    out = [
        _try(f"strip prefix {p!r}", ("--strip-prefix", p), _stripper(p), found, judge, current, allow) for p in strip
    ]
    out += [_try(f"add prefix {p!r}", ("--rename", f"^={p}"), _adder(p), found, judge, current, allow) for p in add]
    return out


def strip_candidates(keys: Sequence[str]) -> list[str]:
    """Prefixes worth stripping from the file's unexpected keys: the first segment, and
    the whole stack of wrapper segments at the front (`_orig_mod.module.` from
    torch.compile over DataParallel), also after a first segment (`ema.module.`)."""
    out: dict[str, None] = {}
    for key in keys:
        parts = key.split(".")[:-1]  # the leaf name is never a prefix
        if not parts:
            continue
        out[parts[0] + "."] = None
        run = _wrapper_run(parts)
        if run:
            out[".".join(parts[:run]) + "."] = None
        after = _wrapper_run(parts[1:])
        if after:
            out[".".join(parts[: 1 + after]) + "."] = None
    return list(out)


def _wrapper_run(parts: list[str]) -> int:
    run = 0
    while run < len(parts) and parts[run] in WRAPPERS:
        run += 1
    return run


def _other_roots(checkpoint: Checkpoint, judge: Judge, current: KeyComparison, allow: Allowance) -> list[Suggestion]:
    out = []
    for path, node in walk(checkpoint.root):
        if not path or path == current.root or path.count(".") > MAX_ROOT_DEPTH:
            continue
        candidate = weights_of(node, path)
        if candidate is None:
            continue
        found = {t.key: (t.tensor.shape, t.tensor.dtype) for t in candidate.tensors}
        suggestion = _try(f"use the weights at {path!r}", ("--root", path), lambda k: k, found, judge, current, allow)
        if suggestion is not None:
            out.append(suggestion)
    return out


def _try(
    fix: str,
    option: tuple[str, str],
    rename: Callable[[str], str],
    found: Expected,
    judge: Judge,
    current: KeyComparison,
    allow: Allowance,
) -> Suggestion | None:
    renamed = {rename(k): v for k, v in found.items()}
    if len(renamed) < len(found):
        return None  # two keys would get one name: convert refuses that rename
    after = judge(renamed)
    fixes = after.matched - current.matched
    if fixes <= 0:
        return None
    return Suggestion(
        fix,
        option,
        fixes,
        len(after.missing),
        len(after.unexpected),
        len(after.shape_mismatch),
        allow.passes(after),
    )


def _stripper(prefix: str) -> Callable[[str], str]:
    return lambda key: key[len(prefix) :] if key.startswith(prefix) else key


def _adder(prefix: str) -> Callable[[str], str]:
    return lambda key: prefix + key


def _first_segments(keys: list[str]) -> list[str]:
    return list(dict.fromkeys(k.split(".", 1)[0] + "." for k in keys if "." in k))
