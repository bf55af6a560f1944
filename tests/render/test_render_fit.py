"""The pieces that fit text to a terminal: key cuts, wrapped prose, shell commands, and
tables that fall back to saying uniform columns once, then to one block per row."""

from __future__ import annotations

import shlex

import pytest
import torchvision
from support.cli import matches_cut

from ckpttool.render import command_lines, fit_table, key_values, shorten_keys, wrap_text


@pytest.mark.slow
def test_resnet_keys_keep_block_and_leaf() -> None:
    keys = list(torchvision.models.resnet34(weights=None).state_dict())
    shown = shorten_keys(keys, 22)
    assert all(len(s) <= 22 and matches_cut(s, k) for s, k in zip(shown, keys, strict=True))
    assert [s for s, k in zip(shown, keys, strict=True) if k.endswith("bn1.running_mean")][:3] == [
        "bn1.running_mean",
        "layer1.0…running_mean",
        "layer1.1…running_mean",
    ]


def test_qualified_names_keep_their_name() -> None:
    names = [f"torch.distributed.checkpoint.metadata.{n}" for n in ("TensorStorageMetadata", "ChunkStorageMetadata")]
    assert shorten_keys(names, 30) == ["torch…TensorStorageMetadata", "torch…ChunkStorageMetadata"]


def test_paths_keep_the_file_name() -> None:
    paths = ["/data/runs/exp-7/checkpoints/epoch_010.pth", "/data/runs/exp-7/checkpoints/epoch_020.pth"]
    assert shorten_keys(paths, 28) == ["…/checkpoints/epoch_010.pth", "…/checkpoints/epoch_020.pth"]


@pytest.mark.parametrize("width", [20, 40, 80])
def test_wrapped_text_fits_and_keeps_every_character(width: int) -> None:
    text = (
        "a DCP folder: dcp.load reads .metadata with pickle.load and non-tensor entries with "
        "torch.load(weights_only=False) /work/runs/resnet-cifar10/checkpoints/step-000100/.metadata"
    )
    lines = wrap_text(text, width, indent="  ", first="note: ")
    assert all(len(line) <= width for line in lines), lines
    joined = "".join(line.removeprefix("note: ").removeprefix("  ") for line in lines)
    assert joined.replace(" ", "") == text.replace(" ", "")


def test_command_lines_paste_as_the_same_command() -> None:
    command = "ckpttool remap 'runs/a dir/cnn_state_dict_cuda0.pth' OUT --device cpu"
    lines = command_lines(command, 50, indent="    ")
    assert all(len(line) <= 50 for line in lines) and len(lines) > 1
    assert shlex.split(" ".join(line.strip().removesuffix("\\") for line in lines)) == shlex.split(command)


def test_uniform_columns_are_said_once() -> None:
    headers = ("key", "dtype", "min", "max", "mean", "std", "nan", "inf")
    rows = [
        (f"block{i}.weight", "float32", f"-0.31426{i}", f"0.28435{i}", f"-0.019415{i}", f"0.15551{i}", 0, 0)
        for i in range(3)
    ]
    out = fit_table(headers, rows, 60)
    assert all(len(line) <= 60 for line in out.splitlines()), out
    assert out.splitlines()[-1] == "(every row: dtype float32; nan 0; inf 0)"
    assert "block2.weight" in out and "-0.0194152" in out


def test_too_many_columns_become_one_block_per_row() -> None:
    headers = [f"column{i}" for i in range(8)]
    rows = [[f"{i}.{j}123456" for j in range(8)] for i in range(2)]
    out = fit_table(headers, rows, 40)
    assert all(len(line) <= 40 for line in out.splitlines()), out
    blocks = out.split("\n\n")
    assert len(blocks) == 2
    assert [line.split() for line in blocks[1].splitlines()] == [
        [f"{h}:", v] for h, v in zip(headers, rows[1], strict=True)
    ]


def test_paths_of_runs_keep_their_run() -> None:
    """Files of the same name in two run folders, too long to keep both the run and the
    name whole: each keeps its run and the end of its name, and rows stay apart."""
    paths = [
        f"fixtures/deepspeed/{run}/global_step2/bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        for run in ("zero2_bf16_3ranks", "zero3_bf16_3ranks")
        for rank in (0, 1)
    ]
    shown = shorten_keys(paths, 56)
    assert len(set(shown)) == len(paths) and all(len(s) <= 56 for s in shown), shown
    for s, path in zip(shown, paths, strict=True):
        assert matches_cut(s, path) and path.split("/")[2] in s, (s, path)


def test_a_class_count_stays_whole_when_its_name_is_cut() -> None:
    """inspect's `classes` line: a long dotted class name seen 13,944 times is shortened
    inside its name, never through the count (`x13…` would read as thirteen-something)."""
    name = "mylab.chemistry.lookups.AtomPropertiesLookupTableEntry"
    lines = key_values([("entry hyperparameters", "{}"), ("classes", [f"{name} x13944", "builtins.set"])], 80)
    assert all(len(line) <= 80 for line in lines.splitlines())
    assert " x13944," in lines and "…" in lines
