"""The bytes that readers decode: a file, or part of one, read whole or mapped."""

from __future__ import annotations

import mmap

FileData = bytes | bytearray | mmap.mmap
