"""Vetted callables reached in a form their argument check missed.

Each construction is shown to do what it claims under `pickle.loads` in a child process,
then shown flagged by `scan` and `check`.
"""

from __future__ import annotations

import subprocess
import sys

from support.builders import Raw, call_global, torch_zip, whole
from support.hostile import FileWriter, assert_no_crash, global_entry, only_file, run_cli, scan

_LENGTH = "import pickle, sys\nprint(len(pickle.loads(sys.stdin.buffer.read())))\n"


def loaded_length(data: bytes) -> int:
    done = subprocess.run([sys.executable, "-c", _LENGTH], input=data, capture_output=True, check=True, timeout=60)
    return int(done.stdout)


def test_a_byte_count_computed_by_int_is_still_an_allocation(write: FileWriter) -> None:
    """bytes(n) allocates n bytes of the file's choosing, and is refused; bytes(int('n'))
    is the same allocation with the count spelled as a vetted call."""
    count = 1 << 20  # the test's own allocation; a file would ask for gigabytes
    data = whole(call_global("builtins", "bytes", Raw(call_global("builtins", "int", str(count)))))
    assert loaded_length(data) == count
    path = write("count.pt", torch_zip(data))
    outcome = scan(path)
    assert_no_crash(outcome)
    assert outcome.exit_code == 1
    report = only_file(outcome)
    assert report["verdict"] == "unknown-call"
    assert global_entry(report, "builtins.bytes")["verdict"] == "unknown-call"
    assert run_cli("check", path).exit_code == 1
