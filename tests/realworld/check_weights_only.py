"""For each (path, imports, line) in the JSON on stdin: does torch.load(weights_only=True)
load the file as is, and after running the printed add_safe_globals line as a user would
paste it? Run in a subprocess with the stand-in classes importable; prints JSON."""

from __future__ import annotations

import json
import sys
import warnings

import torch
from standins import register_library_names


def loads(path: str) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(path, weights_only=True)  # noqa: TID251 - the ground truth, on files the test made
    except Exception as exc:  # noqa: BLE001 - any refusal counts
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    return None


def main() -> None:
    register_library_names()
    results = {}
    for path, imports, line in json.load(sys.stdin):
        before = loads(path)
        after = None
        if line:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy.core is deprecated
                exec("\n".join(["import torch", *imports, line]), {})  # noqa: S102 - the lines under test
            after = loads(path)
            torch.serialization.clear_safe_globals()
        results[path] = {"as_is": before, "after_line": after}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
