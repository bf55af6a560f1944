"""Ground truth: the scan's `weights_only` answer is what `torch.load(weights_only=True)` does.

`loads` exactly when torch accepts the file as is; `loads-after-allowlist` when it refuses it
as is and accepts it after the printed `add_safe_globals` line is run as a user would paste
it; `refused` when it still refuses it after that line. Every file here is made by this test
(torch.save or the builders), and the hand-made ones carry no payload, so loading them with
torch is harmless.
"""

from __future__ import annotations

import argparse
import collections
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support.builders import (
    Op,
    call_global,
    checkpoint_zip,
    float_tensor,
    legacy_tar,
    legacy_tar_members,
    torch_zip,
    value,
    whole,
)
from support.hostile import only_file, scan, torch_accepts
from support.tinynet import TinyNet

from ckpttool.ops.safety import scan_file

Saver = Callable[[Path], None]


def saved(obj: Callable[[], Any], **options: Any) -> Saver:
    return lambda path: torch.save(obj(), path, **options)


def written(data: Callable[[], bytes]) -> Saver:
    def write(path: Path) -> None:
        path.write_bytes(data())

    return write


def tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return TinyNet().state_dict()


def quantized(tensor: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        # torch 2.14 deprecates quantized tensors; files holding them still exist.
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor", category=UserWarning)
        return torch.quantize_per_tensor(tensor, 0.1, 0, torch.quint8)


def setitems_on_torch_size() -> bytes:
    """GHSA-63cw-57p8-fm3p: SETITEMS on a torch.Size, which only a dict may receive."""
    size = call_global("torch", "Size", (1, 2))
    return torch_zip(whole(size + Op.MARK + value("k") + value(1) + Op.SETITEMS))


FILES: dict[str, Saver] = {
    "plain_state_dict": saved(tiny_state_dict),
    "whole_pickled_model": saved(TinyNet),
    "protocol_4_checkpoint": saved(tiny_state_dict, pickle_protocol=4),
    "protocol_3_checkpoint": saved(tiny_state_dict, pickle_protocol=3),
    "setitems_on_a_non_dict": written(setitems_on_torch_size),
    "legacy_state_dict": saved(tiny_state_dict, _use_new_zipfile_serialization=False),
    "training_checkpoint_with_namespace": saved(
        lambda: {"args": argparse.Namespace(lr=0.1), "state_dict": tiny_state_dict(), "epoch": 3}
    ),
    "optimizer_and_counters": saved(
        lambda: {
            "optimizer": torch.optim.Adam(TinyNet().parameters()).state_dict(),
            "seen": collections.Counter(a=2),
            "classes": {1, 2},
            "phase": 1 + 2j,
            "raw": b"bytes",
            "dtype": torch.float16,
        }
    ),
    "python_slice": saved(lambda: {"window": slice(1, 5)}),
    "numpy_array": saved(lambda: {"mean": np.zeros(3)}),
    "sparse_and_quantized": saved(lambda: {"s": torch.ones(3).to_sparse(), "q": quantized(torch.ones(3))}),
    "storages_on_cuda0": written(lambda: checkpoint_zip([float_tensor("w", "0", 2, 3, location="cuda:0")])),
    "numpy_scalars_and_arrays": saved(
        lambda: {"best": np.float64(0.5), "step": np.int64(3), "mean": np.arange(3.0), "mask": np.ones(2, bool)}
    ),
    "numpy_structured_and_object_arrays": saved(
        lambda: {"rec": np.zeros(2, dtype=[("a", "f4"), ("b", "i8")]), "names": np.array(["x", "yz"])}
    ),
    "empty_defaultdict": saved(lambda: {"counts": collections.defaultdict(int)}),
    "filled_defaultdict": saved(lambda: {"seen": collections.defaultdict(list, {"a": [1]})}),
    "range_frozenset_deque": saved(
        lambda: {"r": range(0, 10, 2), "f": frozenset({1, 2}), "q": collections.deque([1, 2], maxlen=4)}
    ),
    "legacy_whole_model": saved(TinyNet, _use_new_zipfile_serialization=False),
    # no typed storage class names these dtypes, and torch's legacy reader cannot read them back
    "legacy_untyped_storages": saved(
        lambda: {"u16": torch.zeros(2, dtype=torch.uint16), "f8": torch.zeros(2, dtype=torch.float8_e4m3fn)},
        _use_new_zipfile_serialization=False,
    ),
    "legacy_tar": written(lambda: legacy_tar(legacy_tar_members())),
    # torch knows only b"little" and b"big"; the scan fails closed on any other (dangerous)
    "byteorder_with_a_newline": written(lambda: checkpoint_zip([float_tensor("w", "0", 2)], byteorder=b"little\n")),
}
FAILS_CLOSED = {"setitems_on_a_non_dict", "byteorder_with_a_newline"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("agreement")
    paths = {}
    for name, save in FILES.items():
        paths[name] = folder / f"{name}.pt"
        save(paths[name])
    return paths


@contextmanager
def allowlist_kept() -> Iterator[None]:
    """Restore torch's user allowlist after a test extends it."""
    before = torch.serialization.get_safe_globals()
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def run_allowlist_line(line: str, imports: list[str]) -> None:
    """Execute the scan's import statements and `add_safe_globals` line as a user would paste them."""
    exec("\n".join(["import torch", *imports, line]), {})  # noqa: S102 - the lines under test


@pytest.mark.parametrize("name", sorted(FILES))
def test_weights_only_answer_is_what_torch_does(checkpoints: dict[str, Path], name: str) -> None:
    path = checkpoints[name]
    report = scan_file(str(path))
    said = report.weights_only.result
    assert (said == "loads") == torch_accepts(path), f"{said}: {report.weights_only.reasons}"
    if report.allowlist is not None:
        with allowlist_kept():
            run_allowlist_line(report.allowlist, report.imports)
            assert torch_accepts(path) == (said in ("loads", "loads-after-allowlist")), report.weights_only.reasons
    else:
        assert said in ("loads", "refused")
    assert bool(report.weights_only.reasons) == (said == "refused")


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_verdict_and_the_exit_code(checkpoints: dict[str, Path], name: str) -> None:
    """None of these files calls anything unvetted; the GHSA-63cw shape and the unknown byteorder
    (which fails closed) are dangerous."""
    path = checkpoints[name]
    verdict = scan_file(str(path)).verdict
    assert verdict in (("dangerous",) if name in FAILS_CLOSED else ("safe", "needs-allowlist"))
    cli = scan(path)
    assert only_file(cli)["verdict"] == verdict
    assert cli.exit_code == (1 if verdict == "dangerous" else 0)


@pytest.mark.parametrize(
    "name", ["whole_pickled_model", "training_checkpoint_with_namespace", "numpy_scalars_and_arrays", "python_slice"]
)
def test_the_allowlist_line_makes_torch_load_the_file(checkpoints: dict[str, Path], name: str) -> None:
    path = checkpoints[name]
    report = scan_file(str(path))
    assert (report.verdict, report.weights_only.result) == ("needs-allowlist", "loads-after-allowlist")
    assert report.allowlist is not None and report.allowlist.startswith("torch.serialization.add_safe_globals([")
    assert not torch_accepts(path)
    with allowlist_kept():
        run_allowlist_line(report.allowlist, report.imports)
        assert torch_accepts(path)


@pytest.mark.parametrize(("name", "reason"), [("filled_defaultdict", "SETITEM on"), ("legacy_whole_model", "'module'")])
def test_what_no_allowlist_can_fix_is_named(checkpoints: dict[str, Path], name: str, reason: str) -> None:
    report = scan_file(str(checkpoints[name]))
    assert report.verdict == "needs-allowlist"
    assert report.weights_only.result == "refused"
    assert any(reason in r for r in report.weights_only.reasons), report.weights_only.reasons


def test_needs_allowlist_names_the_model_classes(checkpoints: dict[str, Path]) -> None:
    report = scan_file(str(checkpoints["whole_pickled_model"]))
    listed = {g.qualname for g in report.globals if g.verdict == "needs-allowlist"}
    assert listed == {f"{TinyNet.__module__}.TinyNet", "torch.nn.modules.linear.Linear"}
    assert all(g.uses == ["instantiate"] for g in report.globals if g.verdict == "needs-allowlist")


def test_dangerous_files_stay_unloadable_even_when_every_listed_class_is_allowlisted(
    checkpoints: dict[str, Path],
) -> None:
    """`dangerous` is not a matter of allowlisting: torch still refuses the GHSA-63cw shape."""
    path = checkpoints["setitems_on_a_non_dict"]
    assert scan_file(str(path)).verdict == "dangerous"
    with allowlist_kept():
        torch.serialization.add_safe_globals([torch.Size])
        assert not torch_accepts(path)


def test_a_model_class_that_no_longer_exists_is_still_judged(tmp_path: Path) -> None:
    """The scan never imports the class: a module that is gone changes nothing."""
    saved_model = tmp_path / "model.pt"
    torch.save(TinyNet(), saved_model)
    path = tmp_path / "gone.pt"
    with zipfile.ZipFile(saved_model) as source, zipfile.ZipFile(path, "w") as renamed:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"support.tinynet", b"support.vanish_")
            renamed.writestr(info, data)
    report = scan_file(str(path))
    assert report.verdict == "needs-allowlist"
    assert "support.vanish_.TinyNet" in {g.qualname for g in report.globals}
    assert "support.vanish_" not in sys.modules
