"""Each rank's `torch.save(model.state_dict())` of a model sharded with DTensors (FSDP2,
tensor parallel, both on a 2-D mesh), written by torch on gloo ranks
(fixtures/dtensor_generate.py), against what torch.load(weights_only=True) gives once
`torch.distributed.tensor` is imported: the local shard (`to_local()`), the global shape,
the placements, the mesh.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from safetensors.torch import load_file
from support.dtensor import FIXTURES, RANK_FILES, ground_truth

from ckpttool.pickle.vetted_dtensor import REGISTERED_BY_IMPORT

Truth = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def truth() -> tuple[dict[str, str], dict[str, Truth]]:
    return ground_truth(RANK_FILES)


def _ids(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@pytest.mark.parametrize("path", RANK_FILES, ids=_ids)
def test_scan_vets_what_torch_loads_after_the_import(
    path: Path, truth: tuple[dict[str, str], dict[str, Truth]], cli: Callable[..., Result]
) -> None:
    refused, _ = truth
    assert "``torch.distributed.tensor`` must be imported to load DTensors" in refused[str(path)]
    result = cli("scan", "--format", "json", path)
    assert result.exit_code == 0, result.stdout
    (report,) = json.loads(result.stdout)["files"]
    assert report["verdict"] == "needs-allowlist"
    assert report["weights_only"] == {"result": "loads-after-allowlist", "reasons": []}
    assert report["allowlist"] == "import torch.distributed.tensor" and report["imports"] == []
    assert all(g["verdict"] in ("safe", "needs-allowlist") for g in report["globals"])
    table = cli("scan", path).stdout
    assert "loads after the import below" in table and table.rstrip().endswith("import torch.distributed.tensor")
    assert cli("check", path).exit_code == 0


def test_the_import_allowlists_exactly_the_vetted_names() -> None:
    code = (
        "import torch, torch.distributed.tensor\n"
        "print('\\n'.join(f'{g.__module__}.{g.__qualname__}' for g in torch.serialization.get_safe_globals()"
        " if isinstance(g, type) and g.__module__.startswith('torch.distributed')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    registered = set(done.stdout.split())
    # ShardOrderEntry's and TensorMeta's __module__ is the private module they are pickled under
    assert set(REGISTERED_BY_IMPORT) <= registered
    assert registered - set(REGISTERED_BY_IMPORT) <= {"torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING"}


@pytest.mark.parametrize("path", RANK_FILES, ids=_ids)
def test_inspect_lists_each_local_shard_with_its_place(
    path: Path, truth: tuple[dict[str, str], dict[str, Truth]], cli: Callable[..., Result]
) -> None:
    expected = truth[1][str(path)]
    report = json.loads(cli("inspect", "--all", "--format", "json", path).stdout)
    rows = {row["key"]: row for row in report["tensors"]}
    assert set(rows) == set(expected)  # a mesh's rank map is no tensor of the file's value
    for key, want in expected.items():
        row = rows[key]
        assert (row["dtype"], row["shape"]) == (want["dtype"], want["shape"]), key
        if not want["dtensor"]:
            assert "dtensor" not in row
            continue
        assert row["stride"] == want["stride"] and row["kind"] == "torch.distributed.tensor.DTensor"
        layout = row["dtensor"]
        assert layout["global_shape"] == want["global_shape"] and layout["placements"] == want["placements"]
        assert layout["mesh"]["shape"] == want["mesh_shape"]
        assert (layout["mesh"]["dim_names"] or []) == want["mesh_dim_names"]
        assert layout["coordinate"] == want["coordinate"]


def test_inspect_fits_80_columns(cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = cli("inspect", FIXTURES / "fsdp2_tp" / "rank3.pt").stdout
    assert max(map(len, text.splitlines())) <= 80
    assert "mesh:        [2, 2] (dp, tp) on cpu, this rank at [1, 1]" in text
    assert "fc1.weight  float32  [2, 6]" in text and "[8, 6]    _S(0,2) S(0)" in text


@pytest.mark.parametrize("path", [FIXTURES / "fsdp2" / "rank1.pt", FIXTURES / "tp" / "rank0.pt"], ids=_ids)
def test_convert_writes_the_local_shards(
    path: Path, truth: tuple[dict[str, str], dict[str, Truth]], cli: Callable[..., Result], tmp_path: Path
) -> None:
    out = tmp_path / "shards.safetensors"
    result = cli("convert", path, out)
    assert result.exit_code == 0, result.stderr
    assert "written as this rank's local shards (DTensor.to_local())" in result.stderr
    written = load_file(out)
    for key, want in truth[1][str(path)].items():
        assert list(written[key].shape) == want["shape"], key
        assert written[key].double().flatten().tolist() == want["values"], key


def test_diff_of_two_ranks_and_of_a_rank_with_itself(cli: Callable[..., Result]) -> None:
    rank0, rank1 = FIXTURES / "fsdp2" / "rank0.pt", FIXTURES / "fsdp2" / "rank1.pt"
    assert cli("diff", rank1, rank1).exit_code == 0
    different = cli("diff", "--format", "json", rank0, rank1)
    assert different.exit_code == 1
    report = json.loads(different.stdout)
    assert {m["key"] for m in report["shape_mismatch"]} >= {"fc1.weight", "head.bias"}


@pytest.mark.slow
def test_files_the_generator_writes_now_read_the_same(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """The committed files are torch 2.14.1's; this torch's, written afresh on 2 gloo ranks."""
    generator = FIXTURES.parent / "dtensor_generate.py"
    subprocess.run([sys.executable, str(generator), str(tmp_path), "fsdp2"], check=True, timeout=600)
    paths = sorted((tmp_path / "fsdp2").glob("*.pt"))
    _, truth = ground_truth(paths)
    for path in paths:
        assert json.loads(cli("scan", "--format", "json", path).stdout)["files"][0]["verdict"] == "needs-allowlist"
        rows = {r["key"]: r for r in json.loads(cli("inspect", "--all", "--format", "json", path).stdout)["tensors"]}
        for key, want in truth[str(path)].items():
            assert rows[key]["shape"] == want["shape"], key
            if want["dtensor"]:
                assert rows[key]["dtensor"]["global_shape"] == want["global_shape"], key
