"""`convert --keep-structure`: rename the weights' keys inside a torch checkpoint and keep
everything else — epoch, loss, optimizer state, hyper-parameters, the state_dict's
`_metadata` — so a DataParallel or compiled training checkpoint is fixed and still resumes.

This is remap's rewrite with another edit: the pickle is written back from its inert
graph with only the keys of the weights root renamed (and the module prefixes of its
`_metadata`, as torch's `consume_prefix_in_state_dict_if_present` renames them); the
storage records are copied byte for byte. The output must decode to the source's
objects with exactly those keys renamed, and every record must keep its CRC-32, before
it replaces anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpttool.checkpoint import TensorRef
from ckpttool.errors import UsageError, WeightsNotFoundError, about
from ckpttool.formats import read_checkpoint
from ckpttool.interpret import StateDict
from ckpttool.ops.convert.plan import rename
from ckpttool.ops.rewrite.remapping import RemapReport, rewrite_pickle
from ckpttool.pickle import Call
from ckpttool.weights import find_weights, resolve_path

if TYPE_CHECKING:
    from ckpttool.progress import Progress


@dataclass
class RekeyReport:
    source: str
    output: str
    weights_root: str
    keys: int  # keys of the weights root
    renamed: dict[str, str] = field(default_factory=dict)  # old -> new, changed keys only
    kept: list[str] = field(default_factory=list)  # the file's other top-level entries
    notes: list[str] = field(default_factory=list)
    verified: str = "same objects with the keys renamed; every record copied intact"


def rekey(
    src: str,
    dst: str,
    strip_prefixes: Sequence[str] = (),
    renames: Sequence[tuple[str, str]] = (),
    root: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> RekeyReport:
    """Write SRC to DST with the weights' keys renamed and every other object kept."""
    with about(src):
        checkpoint = read_checkpoint(src)
        weights = find_weights(checkpoint.root, root)
        if weights.root is None:
            raise WeightsNotFoundError("no weights found to rename; name them with --root")
        if weights.kind != "state_dict":
            raise UsageError(
                f"the weights are a pickled {weights.kind.replace('_', ' ')}, not a state_dict: "
                "--keep-structure renames a state_dict's keys; convert without it writes the weights as one"
            )
        holder = resolve_path(checkpoint.root, weights.root)
        names = [k for k, v in holder.items() if isinstance(v, TensorRef) or str(k).endswith("_extra_state")]
        notes: list[str] = []
        new_names = rename(names, strip_prefixes, renames, notes)
        _refuse_collisions(holder, names, new_names)
    keys = dict(zip(names, new_names, strict=True))
    module = _module_renamer(strip_prefixes, renames)
    path = weights.root
    report = RekeyReport(src, dst, path, len(names), {a: b for a, b in keys.items() if a != b}, notes=notes)
    report.kept = [str(k) for k in _top_level_keys(checkpoint.root) if not _is_root_entry(k, path)]
    if not report.renamed:
        notes.append("no key changed: the output holds the source's objects as they were")

    def edit(graph: Any) -> None:
        _rename_raw(_raw_at(graph, path), keys, module)

    def expect(tree: Any) -> None:
        _rename_decoded(resolve_path(tree, path), keys, module)

    remapped = RemapReport(src, dst, len(checkpoint.storages))
    rewrite_pickle(checkpoint, dst, remapped, [], force=force, progress=progress, edit=edit, expect=expect)
    return report


def _refuse_collisions(holder: dict[Any, Any], names: list[str], new_names: list[str]) -> None:
    """A weight renamed onto an entry that is not renamed (a mapping that also holds
    other values) would silently replace it."""
    others = set(holder) - set(names)
    for before, after in zip(names, new_names, strict=True):
        if after in others:
            raise UsageError(f"{before!r} would be renamed onto the entry {after!r}")


def _top_level_keys(root: Any) -> list[Any]:
    return list(root) if isinstance(root, dict) else []


def _is_root_entry(key: Any, path: str) -> bool:
    return path == "" or str(key) == path or path.startswith(f"{key}.")


# -- renaming ---------------------------------------------------------------------------------


def _module_renamer(strip_prefixes: Sequence[str], renames: Sequence[tuple[str, str]]) -> Callable[[str], str]:
    """A `_metadata` entry names a module (`module.conv1`, or `` for the root): rename it as
    the keys under it are renamed, i.e. as `name.` (the root as the empty prefix)."""
    compiled = [(re.compile(p), r) for p, r in renames]

    def renamed(name: str) -> str:
        text = f"{name}." if name else ""
        for prefix in strip_prefixes:
            text = text.removeprefix(prefix)
        for regex, replacement in compiled:
            text = regex.sub(replacement, text)
        return text.removesuffix(".")

    return renamed


def _renamed_pairs(pairs: list[tuple[Any, Any]], rename_key: Callable[[Any], Any]) -> list[tuple[Any, Any]]:
    """Pairs with new keys; when two land on one name the later value wins (as torch's)."""
    out: dict[Any, Any] = {}
    for key, value in pairs:
        out[rename_key(key)] = value
    return list(out.items())


def _rename_decoded(node: Any, keys: dict[str, str], module: Callable[[str], str]) -> None:
    """The rename on ckpttool's decoded objects: what the output must read back as."""
    pairs = _renamed_pairs(list(node.items()), lambda k: keys.get(k, k))
    node.clear()
    node.update(pairs)
    if isinstance(node, StateDict) and isinstance(node.metadata, dict):
        metadata = _renamed_pairs(list(node.metadata.items()), lambda k: module(k) if isinstance(k, str) else k)
        node.metadata.clear()
        node.metadata.update(metadata)


def _rename_raw(node: Any, keys: dict[str, str], module: Callable[[str], str]) -> None:
    """The rename on the inert graph the pickle is written from: a dict, or an
    `OrderedDict` call (its SETITEMS pairs, or its one list-of-pairs argument)."""

    def key(k: Any) -> Any:
        return keys.get(k, k) if isinstance(k, str) else k

    if isinstance(node, dict):
        pairs = _renamed_pairs(list(node.items()), key)
        node.clear()
        node.update(pairs)
        return
    if not isinstance(node, Call):
        raise UsageError("the weights are not a mapping ckpttool can rewrite")
    if node.dictitems:
        node.dictitems = _renamed_pairs(node.dictitems, key)
    if node.args and isinstance(node.args[0], (list, tuple)):
        pairs = [tuple(p) for p in node.args[0] if isinstance(p, (list, tuple)) and len(p) == 2]
        node.args = ([list(p) for p in _renamed_pairs(pairs, key)], *node.args[1:])
    state = node.state
    if isinstance(state, dict):
        _rename_modules(state.get("_metadata"), module)


def _rename_modules(metadata: Any, module: Callable[[str], str]) -> None:
    def key(k: Any) -> Any:
        return module(k) if isinstance(k, str) else k

    if isinstance(metadata, dict):
        pairs = _renamed_pairs(list(metadata.items()), key)
        metadata.clear()
        metadata.update(pairs)
    elif isinstance(metadata, Call) and metadata.dictitems:
        metadata.dictitems = _renamed_pairs(metadata.dictitems, key)


# -- finding the weights in the inert graph ---------------------------------------------------


def _raw_at(graph: Any, path: str) -> Any:
    """The node at a dotted path (as `weights.resolve_path` reads it: keys may hold dots)."""
    found = _raw_resolve(graph, path.split(".") if path else [])
    if found is _MISSING:
        raise WeightsNotFoundError(f"nothing at {path!r} in the pickle")
    return found


_MISSING = object()


def _raw_resolve(node: Any, parts: list[str]) -> Any:
    if not parts:
        return node
    for k in range(1, len(parts) + 1):
        name = ".".join(parts[:k])
        for key, child in _raw_children(node):
            if str(key) == name:
                found = _raw_resolve(child, parts[k:])
                if found is not _MISSING:
                    return found
    return _MISSING


def _raw_children(node: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(node, dict):
        yield from node.items()
    elif isinstance(node, (list, tuple)):
        yield from enumerate(node)
    elif isinstance(node, Call):
        if node.dictitems:
            yield from node.dictitems
        if node.args and isinstance(node.args[0], (list, tuple)):
            yield from (tuple(p) for p in node.args[0] if isinstance(p, (list, tuple)) and len(p) == 2)
        if isinstance(node.state, dict):
            yield from node.state.items()
        if node.items:
            yield from enumerate(node.items)
