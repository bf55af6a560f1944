"""`inspect` as people read it: exact table output for the summary, the tree and narrow
terminals (80 and 120 columns, through $COLUMNS), checked against torch's own counts.

Ground truth: a torchvision resnet34 built locally (weights=None, no download), its
`state_dict()`, `named_parameters()` and `named_buffers()`; saved both as a state_dict
(roles guessed from key names) and as a whole pickled model (roles from the module tree).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from click.testing import CliRunner, Result
from torch import nn

from ckpttool.cli import main


@pytest.fixture(scope="module")
def resnet34() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet34(weights=None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, resnet34: nn.Module) -> Path:
    """resnet34 saved both ways, and a small LLM-shaped state_dict with long keys and a tied head."""
    where = tmp_path_factory.mktemp("inspect-output")
    torch.save(resnet34.state_dict(), where / "resnet34.pth")
    torch.save(resnet34, where / "resnet34_model.pth")
    embedding = torch.zeros(1000, 64, dtype=torch.bfloat16)
    llm = {
        "model.embed_tokens.weight": embedding,
        "model.layers.0.self_attn.q_proj.weight": torch.zeros(64, 64, dtype=torch.bfloat16),
        "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(32),
        "model.layers.0.post_attention_layernorm.weight": torch.ones(64, dtype=torch.bfloat16),
        "lm_head.weight": embedding,  # tied: one storage under two keys
    }
    torch.save(llm, where / "llm.pth")
    return where


def run(folder: Path, *args: Any, columns: int | None = 80) -> Result:
    """`ckpttool ARGS` in `folder` (so file names print short), at a terminal width."""
    env = {"COLUMNS": str(columns) if columns else ""}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        result = CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)
    assert (result.exit_code, result.stderr) == (0, ""), result.stderr
    return result


def summary_of(stdout: str) -> str:
    return stdout.split("\n\n", 1)[0]


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


# -- counts against torch ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("name", "roles"), [("resnet34.pth", "guessed"), ("resnet34_model.pth", "module")])
def test_parameters_and_buffers_as_torch_counts_them(folder: Path, resnet34: nn.Module, name: str, roles: str) -> None:
    report = json.loads(run(folder, "inspect", name, "--format", "json", columns=None).stdout)
    weights = report["weights"]
    params = dict(resnet34.named_parameters())
    buffers = dict(resnet34.named_buffers())
    assert [t["key"] for t in weights["tensors"]] == list(resnet34.state_dict())
    assert {t["key"]: t["role"] for t in weights["tensors"]} == {
        **{k: "parameter" for k in params},
        **{k: "buffer" for k in buffers},
    }
    counts = weights["counts"]
    assert counts["parameters"] == {
        "tensors": len(params),
        "numel": sum(p.numel() for p in params.values()),
        "nbytes": sum(p.numel() * p.element_size() for p in params.values()),
    }
    assert counts["buffers"]["tensors"] == len(buffers)
    assert counts["buffers"]["numel"] == sum(b.numel() for b in buffers.values())
    assert counts["dtypes"]["int64"]["tensors"] == sum(b.dtype == torch.int64 for b in buffers.values())
    assert weights["roles"] == roles


def test_tied_tensors_are_counted_once(folder: Path) -> None:
    report = json.loads(run(folder, "inspect", "llm.pth", "--format", "json", columns=None).stdout)
    saved = torch.load(folder / "llm.pth", weights_only=True)
    unique = {t.untyped_storage().data_ptr(): t for t in saved.values()}
    counts = report["weights"]["counts"]
    assert counts["total"]["numel"] == sum(t.numel() for t in unique.values())
    assert counts["total"]["tensors"] == len(saved)
    assert counts["tied"] == len(saved) - len(unique)


# -- exact output ----------------------------------------------------------------------------------

RESNET34_STATE_DICT_80 = """\
file:        resnet34.pth
format:      torch-zip
file size:   83.3 MiB
weights:     state_dict at the whole file, 218 tensors
parameters:  21.8 M (21,797,672) in 110 tensors, 83.2 MiB
buffers:     17.1 K (17,060) in 108 tensors, 66.8 KiB
roles:       a guess from key names and dtypes: the file does not say
total:       21.8 M elements in 218 tensors, 83.2 MiB
dtypes:      float32 21.8 M (83.2 MiB), int64 36 (288 B)
devices:     cpu"""

RESNET34_MODEL_80 = """\
file:        resnet34_model.pth
format:      torch-zip
file size:   83.3 MiB
weights:     pickled nn.Module at the whole file, 218 tensors
parameters:  21.8 M (21,797,672) in 110 tensors, 83.2 MiB
buffers:     17.1 K (17,060) in 108 tensors, 66.8 KiB
roles:       from the pickled module tree
total:       21.8 M elements in 218 tensors, 83.2 MiB
dtypes:      float32 21.8 M (83.2 MiB), int64 36 (288 B)
devices:     cpu
classes:     torchvision.models.resnet.ResNet, torch.nn.modules.conv.Conv2d x36,
             torch.nn.modules.batchnorm.BatchNorm2d x36,
             torch.nn.modules.activation.ReLU x17,
             torch.nn.modules.pooling.MaxPool2d,
             torch.nn.modules.container.Sequential x7,
             torchvision.models.resnet.BasicBlock x16,
             torch.nn.modules.pooling.AdaptiveAvgPool2d,
             torch.nn.modules.linear.Linear"""

RESNET34_CLASSES_120 = """\
classes:     torchvision.models.resnet.ResNet, torch.nn.modules.conv.Conv2d x36,
             torch.nn.modules.batchnorm.BatchNorm2d x36, torch.nn.modules.activation.ReLU x17,
             torch.nn.modules.pooling.MaxPool2d, torch.nn.modules.container.Sequential x7,
             torchvision.models.resnet.BasicBlock x16, torch.nn.modules.pooling.AdaptiveAvgPool2d,
             torch.nn.modules.linear.Linear"""


@pytest.mark.slow
def test_summary_of_a_state_dict(folder: Path, resnet34: nn.Module) -> None:
    assert sum(p.numel() for p in resnet34.parameters()) == 21_797_672
    assert sum(b.numel() for b in resnet34.buffers()) == 17_060
    assert summary_of(run(folder, "inspect", "resnet34.pth").stdout) == RESNET34_STATE_DICT_80


@pytest.mark.slow
def test_summary_of_a_whole_model_wraps_the_classes(folder: Path) -> None:
    assert summary_of(run(folder, "inspect", "resnet34_model.pth").stdout) == RESNET34_MODEL_80
    wide = summary_of(run(folder, "inspect", "resnet34_model.pth", columns=120).stdout)
    assert wide.split("\nclasses:")[0] == RESNET34_MODEL_80.split("\nclasses:")[0]
    assert "\n" + RESNET34_CLASSES_120 in wide


@pytest.mark.slow
def test_serialization_records_only_with_verbose(folder: Path) -> None:
    assert "metadata" not in run(folder, "inspect", "resnet34.pth").stdout
    verbose = summary_of(run(folder, "inspect", "resnet34.pth", "--verbose", columns=None).stdout).splitlines()
    assert [" ".join(line.split()) for line in verbose[:10]] == [
        " ".join(line.split()) for line in RESNET34_STATE_DICT_80.splitlines()
    ]
    names = [line.split(":")[0] for line in verbose[10:]]
    assert names == [
        "metadata version",
        "metadata format_version",
        "metadata storage_alignment",
        "metadata serialization_id",
    ]


RESNET34_TREE_DEPTH_2 = """\
module        params    buffers    tensors       size
--------  ----------  ---------  ---------  ---------
conv1          9,408          0          1   36.8 KiB
bn1              128        129          5    1.0 KiB
layer1       221,952        774         36  870.0 KiB
  0           73,984        258         12  290.0 KiB
  1           73,984        258         12  290.0 KiB
  2           73,984        258         12  290.0 KiB
layer2     1,116,416      2,313         54    4.3 MiB
  0          230,144        771         18  902.0 KiB
  1          295,424        514         12    1.1 MiB
  2          295,424        514         12    1.1 MiB
  3          295,424        514         12    1.1 MiB
layer3     6,822,400      6,669         78   26.1 MiB
  0          919,040      1,539         18    3.5 MiB
  1        1,180,672      1,026         12    4.5 MiB
  2        1,180,672      1,026         12    4.5 MiB
  3        1,180,672      1,026         12    4.5 MiB
  4        1,180,672      1,026         12    4.5 MiB
  5        1,180,672      1,026         12    4.5 MiB
layer4    13,114,368      7,175         42   50.1 MiB
  0        3,673,088      3,075         18   14.0 MiB
  1        4,720,640      2,050         12   18.0 MiB
  2        4,720,640      2,050         12   18.0 MiB
fc           513,000          0          2    2.0 MiB
total     21,797,672     17,060        218   83.2 MiB
"""

RESNET34_TREE_LAYER4_0_FULL = """\
module                          params    buffers    tensors       size
---------------------------  ---------  ---------  ---------  ---------
layer4                       3,673,088      3,075         18   14.0 MiB
  layer4.0                   3,673,088      3,075         18   14.0 MiB
    layer4.0.conv1           1,179,648          0          1    4.5 MiB
    layer4.0.bn1                 1,024      1,025          5    8.0 KiB
    layer4.0.conv2           2,359,296          0          1    9.0 MiB
    layer4.0.bn2                 1,024      1,025          5    8.0 KiB
    layer4.0.downsample        132,096      1,025          6  520.0 KiB
      layer4.0.downsample.0    131,072          0          1  512.0 KiB
      layer4.0.downsample.1      1,024      1,025          5    8.0 KiB
total                        3,673,088      3,075         18   14.0 MiB
"""


@pytest.mark.slow
def test_tree_collapsed_to_depth_2(folder: Path, resnet34: nn.Module) -> None:
    for name in ("resnet34.pth", "resnet34_model.pth"):
        assert run(folder, "inspect", name, "--tree", "--depth", "2").stdout == RESNET34_TREE_DEPTH_2
    layer4 = resnet34.layer4
    assert sum(p.numel() for p in layer4.parameters()) == 13_114_368
    assert sum(b.numel() for b in layer4.buffers()) == 7_175


@pytest.mark.slow
def test_tree_with_full_prefixes(folder: Path, resnet34: nn.Module) -> None:
    result = run(folder, "inspect", "resnet34_model.pth", "--tree", "--full-prefix", "--filter", "layer4.0.*")
    assert result.stdout == RESNET34_TREE_LAYER4_0_FULL
    block = resnet34.layer4[0]
    assert sum(p.numel() for p in block.parameters()) == 3_673_088
    assert sum(b.numel() for b in block.buffers()) == 3_075
    assert sum(p.numel() for p in block.downsample.parameters()) == 132_096


LLM_80 = """\
file:        llm.pth
format:      torch-zip
file size:   135.4 KiB
weights:     state_dict at the whole file, 5 tensors
parameters:  68.2 K (68,192) in 5 tensors, 133.2 KiB
buffers:     none
roles:       a guess from key names and dtypes: the file does not say
total:       68.2 K elements in 5 tensors, 133.2 KiB
tied:        1 key shares a tensor with an earlier key, counted once
dtypes:      bfloat16 68.2 K (133.1 KiB), float32 32 (128 B)
devices:     cpu

key                            dtype     shape         numel       size  role
-----------------------------  --------  ----------  -------  ---------  ------
model.embed_tokens.weight      bfloat16  [1000, 64]   64,000  125.0 KiB  param
model.layers…self_attn…weight  bfloat16  [64, 64]      4,096    8.0 KiB  param
model…rotary_emb.inv_freq      float32   [32]             32      128 B  param
model.layers…weight            bfloat16  [64]             64      128 B  param
lm_head.weight                 bfloat16  [1000, 64]   64,000  125.0 KiB  param
(3 cells cut with … to fit 80 columns; --format csv shows all)
"""

LLM_TABLE_120 = """\
key                                             dtype     shape         numel       size  role
----------------------------------------------  --------  ----------  -------  ---------  ------
model.embed_tokens.weight                       bfloat16  [1000, 64]   64,000  125.0 KiB  param
model.layers.0.self_attn.q_proj.weight          bfloat16  [64, 64]      4,096    8.0 KiB  param
model.layers.0.self_attn.rotary_emb.inv_freq    float32   [32]             32      128 B  param
model.layers.0.post_attention_layernorm.weight  bfloat16  [64]             64      128 B  param
lm_head.weight                                  bfloat16  [1000, 64]   64,000  125.0 KiB  param
"""


def test_long_keys_at_80_columns(folder: Path) -> None:
    out = run(folder, "inspect", "llm.pth").stdout
    assert out == LLM_80
    assert widest(out) <= 80


def test_long_keys_at_120_columns_fit_whole(folder: Path) -> None:
    out = run(folder, "inspect", "llm.pth", columns=120).stdout
    assert out.split("\n\n", 1)[1] == LLM_TABLE_120
    assert widest(out) <= 120


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 120])
def test_every_line_fits(folder: Path, columns: int) -> None:
    for args in (["resnet34_model.pth"], ["resnet34.pth", "--tree"], ["resnet34.pth", "--all"]):
        assert widest(run(folder, "inspect", *args, columns=columns).stdout) <= columns, args


def test_json_and_csv_are_never_cut(folder: Path) -> None:
    keys = list(torch.load(folder / "llm.pth", weights_only=True))
    document = run(folder, "inspect", "llm.pth", "--format", "json", columns=40).stdout
    assert [t["key"] for t in json.loads(document)["weights"]["tensors"]] == keys
    rows = run(folder, "inspect", "llm.pth", "--format", "csv", columns=40).stdout.splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == keys
    assert "…" not in document + "\n".join(rows)


def test_no_terminal_means_no_cut(folder: Path) -> None:
    """Piped to a file or a pager (no $COLUMNS, stdout not a terminal): whole lines."""
    out = run(folder, "inspect", "llm.pth", columns=None).stdout
    assert "…" not in out
    assert out.split("\n\n", 1)[1] == LLM_TABLE_120


@pytest.mark.slow
def test_keys_no_cut_tells_apart_stand_whole_above_their_rows(folder: Path, resnet34: nn.Module) -> None:
    """At 80 columns no cut of resnet34's keys within the room tells every row apart
    (`layer1.0.bn1.running_mean` and `layer1.0.bn2.running_mean` both read
    `layer1.0…running_mean`; torchvision's resnet18 read `…0…num_batches_tracked` twenty
    times): each key, as torch names it, stands whole on a line of its own above its row,
    and no number is cut."""
    keys = list(resnet34.state_dict())
    out = run(folder, "inspect", "resnet34.pth").stdout
    table = out.split("\n\n", 1)[1].splitlines()
    assert widest(out) <= 80
    assert "…" not in "\n".join(table)
    assert table[0] == "key" and table[1].split() == ["dtype", "shape", "numel", "size", "role"]
    assert table[3::2][: len(keys)] == keys
    rows = [line.split() for line in table[4::2][: len(keys)]]
    tensors = resnet34.state_dict()
    assert [int(row[-4].replace(",", "")) for row in rows] == [t.numel() for t in tensors.values()]


def test_a_torchvision_resnet18_state_dict_reads_row_by_row_at_80_columns(tmp_path: Path) -> None:
    """torchvision's resnet18 state_dict, the most common checkpoint there is: cut to the
    23 columns left beside the numbers, its keys read alike (`…0…num_batches_tracked` for
    every block); each key is shown whole, and each shown key is torch's, in order."""
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "resnet18.pth")
    truth = torch.load(tmp_path / "resnet18.pth", weights_only=True)
    out = run(tmp_path, "inspect", "resnet18.pth").stdout
    table = out.split("\n\n", 1)[1].splitlines()
    assert widest(out) <= 80
    assert table[3::2] == list(truth)
    assert [line.split()[0] for line in table[4::2]] == [str(t.dtype).removeprefix("torch.") for t in truth.values()]
