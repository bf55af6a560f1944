"""Pausing Python's cyclic garbage collector while a checkpoint's model is built.

Reading a 50,000-tensor file allocates millions of objects that all live until the
command ends; each full collection would walk every one of them again, about a third
of `inspect`'s time. Reference counting still frees what is dropped meanwhile.

When the pause ends, what it made joins the oldest generation without being walked
(`gc.freeze()` then `gc.unfreeze()`): the youngest generation's collection that would
follow at once walked all of it (a tenth of `inspect` of that file) to free next to
nothing. A model holds cycles (a storage's record names the tensors viewing it), so a
command that goes from file to file does so through `each_file`, which runs the full
collection once the files before made many objects: one file's model at a time.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Objects the pauses moved to the oldest generation unwalked, since the last full
# collection; past this many, the next file starts with one (a 50,000-tensor file makes
# about 1.5 million; a small file's few thousand never cost a walk of everything).
PROMOTED_LIMIT = 250_000
_promoted = 0


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside the block (nested pauses end with the outermost)."""
    global _promoted
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if not gc.get_freeze_count():  # a program's own frozen objects stay frozen
                _promoted += gc.get_count()[0]
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def each_file(items: Iterable[T], work: Callable[[T], R]) -> list[R]:
    """`work(item)` for each item, in order; before each, the cyclic garbage of the files
    done is freed once they made many objects (see the module's docstring)."""
    global _promoted
    results = []
    for item in items:
        if _promoted > PROMOTED_LIMIT:
            gc.collect()
            _promoted = 0
        results.append(work(item))
    return results
