"""Sparse tensors whose indices break their invariants: torch.load(weights_only=True)
validates each sparse tensor it rebuilds and refuses the file; weights_only=False hands
it over unchecked, and `to_dense()` of a coalesced tensor with an index past its size
writes out of bounds (the process dies). Such files were `safe`, said to `load`.

The files are torch.save of tensors built with `check_invariants=False`; each is shown
refused by torch.load(weights_only=True), and the out-of-bounds one shown to crash the
process that loads it without the check and uses it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.hostile import assert_no_crash, only_file, run_cli, scan, torch_accepts

torch = pytest.importorskip("torch")
# What building a compressed sparse tensor says, here in the tests' own generators.
pytestmark = pytest.mark.filterwarnings("ignore:Sparse (CSR|BSR|CSC|BSC) tensor support is in beta")

_USE = "import sys, torch\ntorch.load(sys.argv[1], weights_only=False)['s'].to_dense()\n"


def index_past_the_size() -> Any:
    return torch.sparse_coo_tensor(
        torch.tensor([[0, 100_000_000]]), torch.tensor([1.0, 2.0]), (4,), check_invariants=False, is_coalesced=True
    )


def uncoalesced_said_coalesced() -> Any:
    return torch.sparse_coo_tensor(
        torch.tensor([[1, 0]]), torch.tensor([1.0, 2.0]), (4,), check_invariants=False, is_coalesced=True
    )


def csr_column_past_the_width() -> Any:
    return torch.sparse_csr_tensor(
        torch.tensor([0, 1, 2]), torch.tensor([0, 9]), torch.tensor([1.0, 2.0]), (2, 3), check_invariants=False
    )


BROKEN: dict[str, Callable[[], Any]] = {
    "coo index past the size": index_past_the_size,
    "coo said coalesced": uncoalesced_said_coalesced,
    "csr column past the width": csr_column_past_the_width,
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_sparse_tensor_torch_refuses_is_named_and_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "sparse.pt"
    torch.save({"s": BROKEN[name]()}, path)
    assert not torch_accepts(path)
    outcome = scan(path)
    assert_no_crash(outcome)
    assert outcome.exit_code == 1
    report = only_file(outcome)
    assert report["verdict"] == "dangerous"
    assert report["weights_only"]["result"] == "refused"
    assert any("invariants" in p for p in report["problems"]), report["problems"]
    assert run_cli("check", path).exit_code == 1


@pytest.mark.slow
def test_the_index_past_the_size_crashes_the_process_that_uses_it(tmp_path: Path) -> None:
    path = tmp_path / "sparse.pt"
    torch.save({"s": index_past_the_size()}, path)
    done = subprocess.run([sys.executable, "-c", _USE, str(path)], capture_output=True, check=False, timeout=120)
    assert done.returncode < 0, (done.returncode, done.stderr[-500:])  # killed by a signal (SIGSEGV)


def test_valid_sparse_tensors_of_every_layout_stay_safe(tmp_path: Path) -> None:
    dense = torch.arange(12.0).reshape(3, 4)
    dense[1] = 0
    tensors = {
        "coo": dense.to_sparse(),
        "coo_uncoalesced": torch.sparse_coo_tensor(
            torch.tensor([[2, 0, 2]]), torch.tensor([1.0, 2.0, 3.0]), (4,), check_invariants=True
        ),
        "hybrid": torch.ones(3, 2, 2).to_sparse(1),
        "csr": dense.to_sparse_csr(),
        "csc": dense.to_sparse_csc(),
        "bsr": dense.to_sparse_bsr((1, 2)),
        "bsc": dense.to_sparse_bsc((1, 2)),
    }
    path = tmp_path / "sparse.pt"
    torch.save(tensors, path)
    assert torch_accepts(path)
    outcome = scan(path)
    assert outcome.exit_code == 0, outcome.stdout
    report = only_file(outcome)
    assert (report["verdict"], report["weights_only"]["result"], report["problems"]) == ("safe", "loads", [])
