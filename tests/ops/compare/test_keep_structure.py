"""`convert --keep-structure`: keys renamed inside the whole file, every other object kept.

Ground truth is torch: the output, loaded with `torch.load`, must equal the source loaded
the same way with only the weights' keys renamed — as torch's own
`consume_prefix_in_state_dict_if_present` renames them, `_metadata` included — with the
epoch, loss and optimizer state unchanged; then `model.load_state_dict(strict=True)` and
`optimizer.load_state_dict` take it. Every torch-format fixture whose weights are a
state_dict goes through it; refusals leave nothing at DST and SRC unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from click.testing import Result
from support.compare import save
from support.groundtruth import (
    COMMITTED_DIR,
    TORCH_FORMATS,
    assert_same_content,
    fixture_path,
    load_fixture_index,
    torch_load_trusted,
    tutorial_models,
    weights_at,
)
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

Cli = Callable[..., Result]
ADDED = "renamed."
STATE_DICT_FIXTURES = [
    r
    for r in load_fixture_index()
    if r["format"] in TORCH_FORMATS and not r["whole_model"] and r["name"] != "yolo_style_whole_model_in_dict"
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metadata_of(state: Any) -> Any:
    return getattr(state, "_metadata", None)


def with_prefix_added(state: Mapping[str, Any], prefix: str) -> OrderedDict[str, Any]:
    """`state` as `--rename ^=PREFIX` should leave it: keys and `_metadata` module names
    (the root module `` becomes `renamed`, `conv1` becomes `renamed.conv1`)."""
    out: OrderedDict[str, Any] = OrderedDict((prefix + k, v) for k, v in state.items())
    metadata = metadata_of(state)
    if metadata is not None:
        out._metadata = OrderedDict(  # type: ignore[attr-defined]
            ((prefix + k) if k else prefix.rstrip("."), v) for k, v in metadata.items()
        )
    return out


def replace_at(obj: Any, root: str, value: Any) -> Any:
    """`obj` with the object at dotted `root` replaced (mappings and lists, as the fixtures nest)."""
    if not root:
        return value
    head, _, rest = root.partition(".")
    if isinstance(obj, list):
        copy = list(obj)
        copy[int(head)] = replace_at(obj[int(head)], rest, value)
        return copy
    copy_map = OrderedDict(obj) if isinstance(obj, OrderedDict) else dict(obj)
    copy_map[head] = replace_at(obj[head], rest, value)
    return copy_map


def assert_same_metadata(a: Any, b: Any) -> None:
    assert (metadata_of(a) is None) == (metadata_of(b) is None)
    if metadata_of(a) is not None:
        assert list(metadata_of(a).items()) == list(metadata_of(b).items())


def keep_structure(cli: Cli, src: Path, dst: Path, *options: str) -> dict[str, Any]:
    result = cli("convert", src, dst, "--keep-structure", *options, "--format", "json")
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.slow
@pytest.mark.parametrize("record", STATE_DICT_FIXTURES, ids=[r["name"] for r in STATE_DICT_FIXTURES])
def test_every_state_dict_fixture_keeps_its_objects(cli: Cli, tmp_path: Path, record: dict[str, Any]) -> None:
    """A prefix added to every key of the weights root; torch reads everything else back equal."""
    src = fixture_path(record)
    before = sha256(src)
    dst = tmp_path / "out.pth"
    report = keep_structure(cli, src, dst, "--rename", f"^={ADDED}")
    source, output = torch_load_trusted(src), torch_load_trusted(dst)
    root = report["weights_root"]
    weights = weights_at(source, root)
    expected = replace_at(source, root, with_prefix_added(weights, ADDED))
    assert_same_content(expected, output)
    assert_same_metadata(with_prefix_added(weights, ADDED), weights_at(output, root))
    assert report["renamed"] == {k: ADDED + k for k in weights}
    assert sha256(src) == before


# -- the case the option exists for -----------------------------------------------------------


def trained_dataparallel_checkpoint(path: Path) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The tutorial's general checkpoint, saved from a DataParallel model with BatchNorm."""
    torch.manual_seed(0)
    model = nn.DataParallel(tutorial_models().BatchNormNet())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, *input_shape(model.module))).square().mean().backward()
        optimizer.step()
    checkpoint = {
        "epoch": 7,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": torch.tensor(0.25),
        "args": argparse.Namespace(lr=1e-3, arch="bn"),
    }
    save(checkpoint, path)
    return model.module, optimizer


def input_shape(model: nn.Module) -> tuple[int, ...]:
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    if isinstance(first, nn.Conv2d):
        return (first.in_channels, 28, 28)
    return (first.in_features,)


@pytest.mark.slow
def test_dataparallel_training_checkpoint_is_fixed_and_resumes(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "dp_checkpoint.pth"
    trained, optimizer = trained_dataparallel_checkpoint(src)
    dst = tmp_path / "checkpoint.pth"
    report = keep_structure(cli, src, dst, "--strip-prefix", "module.", "--to", "pth")
    assert report["weights_root"] == "model_state_dict"
    assert report["kept"] == ["epoch", "optimizer_state_dict", "loss", "args"]

    source, output = torch_load_trusted(src), torch_load_trusted(dst)
    consume_prefix_in_state_dict_if_present(source["model_state_dict"], "module.")  # torch's own fix
    assert_same_content(source, output)
    assert_same_metadata(source["model_state_dict"], output["model_state_dict"])

    model = tutorial_models().BatchNormNet()
    model.load_state_dict(output["model_state_dict"], strict=True)
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    resumed = torch.optim.Adam(model.parameters(), lr=1.0)
    resumed.load_state_dict(output["optimizer_state_dict"])
    assert resumed.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    assert output["epoch"] == 7 and output["args"].arch == "bn"


@pytest.mark.slow
def test_output_of_a_weights_only_source_loads_weights_only(cli: Cli, tmp_path: Path) -> None:
    """No class is added: a file torch.load(weights_only=True) reads stays readable that way."""
    src = COMMITTED_DIR / "general_checkpoint.tar"
    dst = tmp_path / "general.tar"
    keep_structure(cli, src, dst, "--rename", "^=net.")
    source = torch.load(src, weights_only=True)  # noqa: TID251 - ground truth
    output = torch.load(dst, weights_only=True)  # noqa: TID251 - ground truth
    source["model_state_dict"] = with_prefix_added(source["model_state_dict"], "net.")
    assert_same_content(source, output)


@pytest.mark.slow
def test_stacked_prefix_from_a_compiled_dataparallel_model(cli: Cli, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cnn = tutorial_models().CNN()
    weights = OrderedDict((f"_orig_mod.module.{k}", v) for k, v in cnn.state_dict().items())
    src = save({"state_dict": weights, "epoch": 1}, tmp_path / "compiled_dp.ckpt")
    dst = tmp_path / "fixed.ckpt"
    keep_structure(cli, src, dst, "--strip-prefix", "_orig_mod.module.")
    output = torch_load_trusted(dst)
    tutorial_models().CNN().load_state_dict(output["state_dict"], strict=True)
    assert output["epoch"] == 1


@pytest.mark.slow
def test_tied_weights_stay_tied(cli: Cli, tmp_path: Path) -> None:
    src = COMMITTED_DIR / "tied_lm_state_dict.pth"
    dst = tmp_path / "tied.pth"
    keep_structure(cli, src, dst, "--rename", "^=lm.")
    source, output = torch_load_trusted(src), torch_load_trusted(dst)
    ties = {(a, b) for a in source for b in source if a < b and _same_storage(source[a], source[b])}
    assert ties, "the fixture has tied weights"
    assert {(a, b) for a in output for b in output if a < b and _same_storage(output[a], output[b])} == {
        ("lm." + a, "lm." + b) for a, b in ties
    }


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())


@pytest.mark.slow
def test_table_output(cli: Cli, tmp_path: Path) -> None:
    src = COMMITTED_DIR / "dataparallel_state_dict.pth"
    dst = tmp_path / "fixed.pth"
    result = cli("convert", src, dst, "--keep-structure", "--strip-prefix", "module.")
    assert (result.exit_code, result.stderr) == (0, "")
    keys = list(cast(Mapping[str, Any], torch_load_trusted(src)))
    assert result.stdout.splitlines() == [
        f"source:    {src}",
        "weights:   the whole file",
        f"wrote:     {dst}",
        f"renamed:   {len(keys)} of {len(keys)} keys",
        f"e.g.:      {keys[0]} -> {keys[0].removeprefix('module.')}",
        "verified:  same objects with the keys renamed; every record copied intact",
    ]


# -- refusals: exit 2, one line, nothing written -----------------------------------------------


@pytest.mark.parametrize(
    ("src", "options", "named"),
    [
        (COMMITTED_DIR / "cnn.safetensors", (), "safetensors"),
        (COMMITTED_DIR / "cnn_whole_model.pth", (), "pickled module"),
        (COMMITTED_DIR / "dataparallel_state_dict.pth", ("--dtype", "float16"), "--dtype"),
        (COMMITTED_DIR / "dataparallel_state_dict.pth", ("--to", "safetensors"), "--to safetensors"),
        (COMMITTED_DIR / "dataparallel_state_dict.pth", ("--rename", "^.*$=x"), "would both be named"),
        (COMMITTED_DIR / "dataparallel_state_dict.pth", ("--root", "nowhere"), "nowhere"),
    ],
    ids=["safetensors-source", "pickled-module", "dtype", "to-safetensors", "collision", "no-root"],
)
def test_refusals(cli: Cli, tmp_path: Path, src: Path, options: tuple[str, ...], named: str) -> None:
    before = sha256(src) if src.is_file() else None
    dst = tmp_path / "out.pth"
    result = cli("convert", src, dst, "--keep-structure", *options)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert named in result.stderr
    assert list(tmp_path.iterdir()) == []
    if before is not None:
        assert sha256(src) == before


def test_rename_onto_another_entry_is_refused(cli: Cli, tmp_path: Path) -> None:
    """Weights found in a mapping that also holds other values: a key renamed onto one of
    those would replace it."""
    src = save({"net": {"w.a": torch.ones(2), "w.b": torch.ones(2), "a": 3}}, tmp_path / "mixed.pth")
    result = cli("convert", src, tmp_path / "out.pth", "--keep-structure", "--root", "net", "--strip-prefix", "w.")
    assert result.exit_code == 2
    assert "'w.a' would be renamed onto the entry 'a'" in result.stderr
