"""Cutting a column of keys, names or paths to a width so that the rows stay apart: each
keeps its end (the leaf) and the parts where it differs from the other rows that end the
same way (`layer1.0…running_mean`, `layer1.1…running_mean`), never a cut number."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ELLIPSIS = "…"


def separator_of(texts: Sequence[str]) -> str:
    """`/` for a column of paths, `.` for dotted keys and qualified names: a few keys
    holding a `/` (`rng_state/shard_0.1.torch_rng_state`) do not make a column paths."""
    return "/" if 2 * sum("/" in t for t in texts) >= len(texts) else "."


def shorten_keys(texts: Sequence[str], width: int, sep: str | None = None) -> list[str]:
    """Each text that is longer than `width`, cut with `…` between whole parts: parts split
    by `sep`, or by what `separator_of` finds (a file name's dots are no key's)."""
    sep = sep or separator_of(texts)
    split = [t.split(sep) for t in texts]
    tries: dict[str, dict[str, Any]] = {}
    for parts in split:  # one tree of the parts before the leaf, per leaf, counting rows
        node = tries.setdefault(parts[-1], {_ROWS: 0})
        node[_ROWS] += 1
        for part in parts[:-1]:
            node = node.setdefault(part, {_ROWS: 0})
            node[_ROWS] += 1
        node.setdefault(_END, {_ROWS: 0})[_ROWS] += 1
    telling = [_telling_parts(parts, tries[parts[-1]]) for parts in split]
    shown = [
        text if len(text) <= width else shorten_key(parts, width, sep, order)
        for text, parts, order in zip(texts, split, telling, strict=True)
    ]
    return _apart(texts, shown, split, telling, width, sep)


def _apart(
    texts: Sequence[str], shown: list[str], split: list[list[str]], telling: list[list[int]], width: int, sep: str
) -> list[str]:
    """Rows whose cuts read the same although their keys differ are cut again keeping the
    deepest telling part first, which is where they part ways with their nearest kin
    (`…word_embeddings.weight`, `…position_embeddings.weight`), and failing that keeping
    the telling parts whole and the end of a long leaf (`…/zero2_run/…rank_0_optim.pt`),
    where that reads apart from every other row; otherwise the first cut stays."""
    out = list(shown)

    def deepest_first(n: int) -> str:
        return shorten_key(split[n], width, sep, sorted(telling[n], reverse=True))

    def leaf_end(n: int) -> str:
        return _leaf_end(split[n], width, sep, sorted(telling[n], reverse=True))

    for cut_again in (deepest_first, leaf_end):
        keys_of: dict[str, set[str]] = {}
        for text, short in zip(texts, out, strict=True):
            keys_of.setdefault(short, set()).add(text)
        again = {n: cut_again(n) for n, short in enumerate(out) if len(keys_of[short]) > 1}
        retried: dict[str, set[str]] = {}
        for n, short in again.items():
            retried.setdefault(short, set()).add(texts[n])
        for n, short in again.items():
            if short not in keys_of and len(retried[short]) == 1:
                out[n] = short
    return out


LEAF_FLOOR = 16  # the least of a long leaf's end kept beside its telling parts


def _leaf_end(parts: list[str], width: int, sep: str, telling: Sequence[int]) -> str:
    """The telling parts whole, as many as leave `LEAF_FLOOR` of room, then `…` and the
    end of the leaf."""
    kept: set[int] = set()
    for index in telling:
        if width - len(_render(parts, kept | {index}, sep)) - 2 >= LEAF_FLOOR:
            kept.add(index)
    prefix = _render(parts, kept, sep) + sep if kept else ""
    room = width - len(prefix) - 1
    return prefix + ELLIPSIS + parts[-1][len(parts[-1]) - room :] if room > 0 else _cut_middle(sep.join(parts), width)


_END = "\0end"  # where a row's parts end in the tree (no key part holds a NUL)
_ROWS = "\0rows"  # how many rows pass through a node


def _telling_parts(parts: list[str], tree: dict[str, Any]) -> list[int]:
    """Indices of the parts where `parts` parts ways with other rows of the same leaf,
    the part that tells it from the most rows first (the deeper one on a tie)."""
    apart: dict[int, int] = {}
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node[part]
        if node[_ROWS] > child[_ROWS]:
            apart[i] = node[_ROWS] - child[_ROWS]
        node = child
    return sorted(apart, key=lambda i: (-apart[i], -i))


def shorten_key(parts: list[str], width: int, sep: str, telling: Sequence[int] = ()) -> str:
    """Whole parts within `width`: the leaf, the telling parts (in the order given), then for a key
    its first part (`layer1…`), then the parts before the leaf, nearest first, up to the
    first that does not fit; each run of left-out parts is one `…`."""
    last = len(parts) - 1
    kept = {last}
    if _rendered_length(parts, kept, sep) > width:  # not even the leaf fits: its own end, cut
        return _cut_middle(sep.join(parts), width)
    for index in [*telling, *([0] if sep == "." else [])]:
        if _rendered_length(parts, kept | {index}, sep) <= width:
            kept.add(index)
    for index in range(last - 1, -1, -1):
        if index in kept:
            continue
        if _rendered_length(parts, kept | {index}, sep) > width:
            break
        kept.add(index)
    return _render(parts, kept, sep)


def _render(parts: list[str], kept: set[int], sep: str) -> str:
    """The kept parts; a run of left-out parts is `…` in a key, `/…/` in a path."""
    gap = ELLIPSIS if sep == "." else sep + ELLIPSIS + sep
    pieces: list[str] = []
    previous = None
    for i in sorted(kept):
        if previous is None:
            pieces.append(gap.lstrip(sep) if i > 0 else "")
        else:
            pieces.append(sep if i == previous + 1 else gap)
        pieces.append(parts[i])
        previous = i
    return "".join(pieces)


def _rendered_length(parts: list[str], kept: set[int], sep: str) -> int:
    return len(_render(parts, kept, sep))


def _cut_middle(text: str, width: int) -> str:
    """The start and the end of `text` around one `…`; more of the end, which names the leaf."""
    if width <= 1:
        return ELLIPSIS[:width]
    head = (width - 1) // 3
    tail = width - 1 - head
    return text[:head] + ELLIPSIS + text[len(text) - tail :]
