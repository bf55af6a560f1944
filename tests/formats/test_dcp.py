"""Reading DCP folders: what ckpttool reads equals what torch.distributed.checkpoint loads.

Ground truth is torch's own: `dcp_to_torch_save` then `torch.load` for the values (the
folders were written by this test, so loading them is safe), `FileSystemReader`'s
`read_metadata` for the metadata. The checkpoints are real: written by `dcp.save` on
gloo with world size 1 in this process and world size 2 in spawned processes
(`tests/support/dcp.py`): sharded DTensors (by rows and by columns), FSDP2, replicated tensors,
optimizer state keyed by index and by name, non-tensor entries.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from hypothesis import given, settings
from hypothesis import strategies as st
from support.cli import cli_json

from ckpttool.errors import CkptError
from ckpttool.formats.dcp import read_dcp, read_dcp_tensors
from ckpttool.formats.dcp_metadata import read_dcp_metadata, torch_metadata
from ckpttool.tensordata import direct_ranges, load_tensor
from ckpttool.weights import all_tensors


@pytest.fixture(scope="module")
def folders(dcp_world1: Path, dcp_world2: Path) -> dict[int, Path]:
    return {1: dcp_world1, 2: dcp_world2}


@pytest.fixture(scope="module")
def truths(folders: dict[int, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """Every leaf of what DCP loads back, by its dotted key (list items by index)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = {}
    for world, folder in folders.items():
        target = tmp_path_factory.mktemp("truth") / "loaded.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp_to_torch_save(folder, target)
        out[world] = dict(_leaves(torch.load(target, weights_only=False)))
    return out


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, (dict, list)):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def _tensors(truth: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in truth.items() if isinstance(v, torch.Tensor)}


def _torch_metadata(folder: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(folder).read_metadata()  # pickle.load: our own file, in a test


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_every_tensor_is_what_dcp_loads(folders: dict[int, Path], truths: dict[int, Any], world: int) -> None:
    want = _tensors(truths[world])
    got = {t.key: t.tensor for t in all_tensors(read_dcp(str(folders[world])).root)}
    assert sorted(got) == sorted(want)  # ours in the state_dict's order, theirs in the order items were written
    for key, ref in got.items():
        assert (ref.dtype, ref.shape) == (str(want[key].dtype).removeprefix("torch."), tuple(want[key].shape)), key
        assert torch.equal(load_tensor(ref), want[key]), key


def test_split_tensors_are_gathered_from_both_ranks(folders: dict[int, Path]) -> None:
    checkpoint = read_dcp(str(folders[2]))
    by_rows, by_columns = checkpoint.chunks["model.0.weight"], checkpoint.chunks["model.2.weight"]
    assert [(c.offsets, c.sizes, c.rank) for c in by_rows] == [((0, 0), (3, 6), 0), ((3, 0), (2, 6), 1)]
    assert [(c.offsets, c.sizes, c.rank) for c in by_columns] == [((0, 0), (3, 3), 0), ((0, 3), (3, 2), 1)]
    assert {c.file for c in by_rows} == {"__0_0.distcp", "__1_0.distcp"}


def test_convert_copies_row_chunks_and_assembles_the_others(
    folders: dict[int, Path], truths: dict[int, Any], cli: Callable[..., Result], tmp_path: Path
) -> None:
    """A tensor split by rows is copied chunk by chunk (each chunk is a byte range of the whole);
    one split by columns is assembled in memory; every tensor converted equals what DCP loads."""
    from safetensors.torch import load_file

    refs = read_dcp_tensors(str(folders[2]))[1]
    by_rows = direct_ranges(refs["model.0.weight"])
    assert by_rows is not None and [p.size for p in by_rows] == [3 * 6 * 4, 2 * 6 * 4]
    assert direct_ranges(refs["model.2.weight"]) is None
    result = cli("convert", folders[2], tmp_path / "all.safetensors", "--root", "")
    assert result.exit_code == 0, result.stderr
    got, want = load_file(tmp_path / "all.safetensors"), _tensors(truths[2])
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


@pytest.mark.parametrize("world", [1, 2])
def test_metadata_equals_torchs_own(folders: dict[int, Path], world: int) -> None:
    theirs = _torch_metadata(folders[world])
    ours = torch_metadata(read_dcp_metadata(str(folders[world])))
    assert ours.state_dict_metadata == theirs.state_dict_metadata
    assert ours.storage_data == theirs.storage_data
    assert ours.planner_data == theirs.planner_data
    assert ours.version == theirs.version


def test_inspect_json_shows_shapes_chunks_and_entries(
    folders: dict[int, Path], truths: dict[int, Any], cli: Callable[..., Result]
) -> None:
    folder = folders[2]
    document = cli_json(cli("inspect", folder, "--all", "--format", "json"))
    want = _tensors(truths[2])
    rows = {t["key"]: t for t in document["tensors"]}
    assert {k: (r["dtype"], r["shape"]) for k, r in rows.items()} == {
        k: (str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in want.items()
    }
    assert document["format"] == "dcp"
    assert document["weights"]["root"] == "model"
    config = {"lr": 0.01, "layers": [6, 5, 3], "name": "run"}
    assert document["entries"] == {"epoch": 3, "config": config, "note": "hello"}
    theirs = _torch_metadata(folder)
    for key, row in rows.items():
        chunks = theirs.state_dict_metadata[key].chunks
        stored = [theirs.storage_data[_index(key, c.offsets)] for c in chunks]
        expected = [
            (list(c.offsets), list(c.sizes), s.relative_path, s.offset, s.length)
            for c, s in zip(chunks, stored, strict=True)
        ]
        assert [(c["offsets"], c["sizes"], c["file"], c["offset"], c["length"]) for c in row["chunks"]] == expected


def _index(fqn: str, offsets: Any) -> Any:
    from torch.distributed.checkpoint.metadata import MetadataIndex

    return MetadataIndex(fqn, offsets)


def test_inspect_verbose_lists_chunks(folders: dict[int, Path], cli: Callable[..., Result]) -> None:
    result = cli("inspect", folders[2], "-v")
    assert result.exit_code == 0, result.stderr
    assert "__1_0.distcp" in result.stdout and "chunks" in result.stdout


def test_optimizer_state_by_index_and_by_name(folders: dict[int, Path], cli: Callable[..., Result]) -> None:
    document = cli_json(cli("optimizer", folders[2], "--format", "json"))
    found = {o["path"]: o for o in document["optimizers"]}
    assert set(found) == {"optimizer", "fsdp.optim"}
    plain, named = found["optimizer"], found["fsdp.optim"]
    assert plain["type"] == named["type"] == "Adam"
    assert [(s["index"], s["name"], s["step"]) for s in plain["state"]] == [
        ("0", "0.weight", 1.0), ("1", "0.bias", 1.0), ("2", "2.weight", 1.0), ("3", "2.bias", 1.0)
    ]  # fmt: skip
    assert plain["state"][0]["tensors"]["exp_avg"] == {"shape": [5, 6], "dtype": "float32"}
    assert [s["name"] for s in named["state"]] == ["0.weight", "0.bias", "2.weight"]
    assert named["param_groups"][0]["lr"] == 0.02


@pytest.mark.slow
def test_diff_and_check_against_a_pth(
    folders: dict[int, Path], truths: dict[int, Any], cli: Callable[..., Result], tmp_path: Path
) -> None:
    model = {k.removeprefix("model."): v for k, v in _tensors(truths[2]).items() if k.startswith("model.")}
    same, changed = tmp_path / "same.pth", tmp_path / "changed.pth"
    torch.save(model, same)
    torch.save({**model, "2.weight": model["2.weight"] + 1}, changed)
    assert cli("diff", folders[2], same).exit_code == 0
    document = cli_json(cli("diff", folders[2], changed, "--format", "json"))
    assert [m["key"] for m in document["value_mismatch"]] == ["2.weight"]
    assert cli("diff", folders[1], folders[2]).exit_code == 0  # one state, saved by one rank and by two
    checked = cli("check", folders[2], "--like", same, "--finite")
    assert checked.exit_code == 0, checked.stdout


def test_stats_read_the_gathered_values(
    folders: dict[int, Path], truths: dict[int, Any], cli: Callable[..., Result]
) -> None:
    document = cli_json(cli("inspect", folders[2], "--stats", "--format", "json"))
    rows = {r["key"]: r for r in document["stats"]}
    weight = _tensors(truths[2])["model.2.weight"]
    assert rows["2.weight"]["min"] == pytest.approx(weight.min().item())
    assert rows["2.weight"]["max"] == pytest.approx(weight.max().item())


@pytest.mark.parametrize("world", [1, 2])
def test_a_real_checkpoint_needs_only_an_allowlist(
    folders: dict[int, Path], cli: Callable[..., Result], world: int
) -> None:
    result = cli("scan", folders[world], "--format", "json")
    assert result.exit_code == 0
    (scanned,) = cli_json(result)["files"]
    assert scanned["verdict"] == "needs-allowlist"
    assert scanned["pickles"] > 1  # .metadata and every item's data.pkl
    assert {g["verdict"] for g in scanned["globals"]} <= {"safe", "needs-allowlist"}
    # dcp.load unpickles without weights_only: no add_safe_globals line to offer, nothing for check to warn of
    assert (scanned["weights_only"]["result"], scanned["allowlist"]) == ("not-applicable", None)
    assert cli_json(cli("check", folders[world], "--format", "json"))["files"][0]["findings"] == []


@pytest.mark.slow
def test_a_file_beside_the_dcp_files_is_an_entry_of_its_own(
    folders: dict[int, Path], cli: Callable[..., Result], tmp_path: Path
) -> None:
    """`.metadata` and the data files are one entry, as dcp.load reads them; a pickle put
    beside them (in the folder or under it) is scanned on its own."""
    from support.ops import ExecPayload

    folder = tmp_path / "dcp"
    shutil.copytree(folders[2], folder)
    marker = tmp_path / "PAYLOAD_RAN"
    (folder / "extra").mkdir()
    torch.save({"payload": ExecPayload(marker)}, folder / "extra" / "extra_state.pt")
    result = cli("scan", folder, "--format", "json")
    assert result.exit_code == 1
    found = {f["path"]: (f["format"], f["verdict"]) for f in cli_json(result)["files"]}
    assert found == {
        str(folder): ("dcp", "needs-allowlist"),
        str(folder / "extra" / "extra_state.pt"): ("torch-zip", "dangerous"),
    }
    (error,) = [f for f in cli_json(cli("check", folder, "--format", "json"))["files"][0]["findings"]]
    assert error["message"].startswith("extra/extra_state.pt: scan calls this file dangerous")
    assert not marker.exists()


# -- broken folders: one line, exit 2, nothing written ----------------------------------------------


def _copy(folder: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(folder, tmp / "copy"))


def _rewrite_metadata(folder: Path, change: Callable[[Any], None]) -> None:
    """Edit a folder's .metadata the way another save would have written it (our own file)."""
    path = folder / ".metadata"
    metadata = pickle.loads(path.read_bytes())
    change(metadata)
    path.write_bytes(pickle.dumps(metadata))


def _other_dtype(metadata: Any) -> None:
    metadata.state_dict_metadata["model.0.bias"].properties.dtype = torch.float64


def _past_the_end(metadata: Any) -> None:
    for index, info in metadata.storage_data.items():
        if index.fqn == "model.0.bias":
            info.length += 1 << 20


def _other_shape(metadata: Any) -> None:
    entry = metadata.state_dict_metadata["model.0.bias"]
    entry.size = torch.Size([6])
    entry.chunks[0].sizes = torch.Size([6])


def _missing_file(folder: Path) -> str:
    (folder / "__1_0.distcp").unlink()
    return "__1_0.distcp"


def _truncated_file(folder: Path) -> str:
    data = folder / "__1_0.distcp"
    data.write_bytes(data.read_bytes()[:-1000])
    return "__1_0.distcp"


BROKEN: dict[str, Callable[[Path], str]] = {
    "missing data file": _missing_file,
    "truncated data file": _truncated_file,
    "dtype disagrees": lambda f: (_rewrite_metadata(f, _other_dtype), "'model.0.bias'")[1],
    "shape disagrees": lambda f: (_rewrite_metadata(f, _other_shape), "'model.0.bias'")[1],
    "range past the end": lambda f: (_rewrite_metadata(f, _past_the_end), "'model.0.bias'")[1],
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(BROKEN))
def test_a_broken_folder_is_one_line_and_exit_2(
    folders: dict[int, Path], cli: Callable[..., Result], tmp_path: Path, damage: str
) -> None:
    folder = _copy(folders[2], tmp_path)
    named = BROKEN[damage](folder)
    for command in (["inspect"], ["optimizer"], ["diff", folders[2]], ["inspect", "--stats"]):
        result = cli(command[0], folder, *command[1:])
        assert result.exit_code == 2, (command, result.stdout)
        (line,) = result.stderr.splitlines()
        assert named in line and str(folder) in line, line
    out = tmp_path / "out.safetensors"
    result = cli("convert", folder, out)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert not out.exists() and list(tmp_path.glob("out*")) == []
    checked = cli("check", folder)
    assert checked.exit_code == 2 or (checked.exit_code == 1 and named in checked.stdout)


@pytest.mark.slow
def test_inspect_and_scan_never_import_torch(folders: dict[int, Path]) -> None:
    """Metadata commands read `.metadata` and the item headers only: no torch, no numpy."""
    code = (
        "import sys; from click.testing import CliRunner; from ckpttool.cli import main\n"
        f"for args in (['inspect', {str(folders[2])!r}, '--all'], ['scan', {str(folders[2])!r}]):\n"
        "    assert CliRunner().invoke(main, args).exit_code == 0, args\n"
        "print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_damaged_data_files_give_values_or_a_ckpt_error(dcp_world1: Path, data: st.DataObject) -> None:
    """Bytes changed anywhere in a data file: every tensor reads, or a CkptError says why."""
    original = (dcp_world1 / "__0_0.distcp").read_bytes()
    at = data.draw(st.integers(0, len(original) - 1))
    patch = data.draw(st.binary(min_size=1, max_size=8))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(dcp_world1, Path(tmp) / "copy"))
        (folder / "__0_0.distcp").write_bytes(original[:at] + patch + original[at + len(patch) :])
        try:
            for named in all_tensors(read_dcp(str(folder)).root):
                load_tensor(named.tensor)
        except CkptError:
            pass


@pytest.mark.parametrize("command", ["inspect", "scan", "check", "convert"])
def test_a_data_file_alone_names_its_folder(folders: dict[int, Path], cli: Callable[..., Result], command: str) -> None:
    """A .distcp file is items one after another, found only through the folder's .metadata:
    named alone it is exit 2 with one line saying which folder to name (a scan fails closed)."""
    data_file = sorted(folders[2].glob("*.distcp"))[0]
    args = [data_file, data_file.parent / "out.safetensors"] if command == "convert" else [data_file]
    result = cli(command, *args)
    assert result.exit_code == 2, result.stdout
    (line,) = result.stderr.splitlines()
    assert line.endswith(f"DCP checkpoint: name its folder, {folders[2]}"), line
    assert not (data_file.parent / "out.safetensors").exists()
