"""Pausing Python's cyclic garbage collector while a checkpoint's model is built.

Reading a 50,000-tensor file allocates millions of objects that all live until the
command ends; each full collection would walk every one of them again, about a third
of `inspect`'s time. Reference counting still frees what is dropped meanwhile, and the
collector runs again (and finds any cycle) once the pause ends, so a folder scan that
opens one file after another holds no more than one file's garbage at a time.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside the block (nested pauses end with the outermost)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
