"""Every text output of every command fits the terminal: each command, with its options,
on the bundled fixtures (and a DCP folder written by torch), at $COLUMNS 80 and 120 —
no line of stdout is wider. JSON and CSV are never cut, so they are not run here;
stderr holds one line per error, whole by design."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.cli import matches_cut
from support.paths import REPO

from ckpttool.cli import main

FILES = REPO / "fixtures" / "files"
CNN_SPEC = "fixtures/tutorial_models.py:CNN"
WIDTHS = (80, 120)


def fixture_paths() -> list[str]:
    """Every bundled checkpoint, file or folder, relative to the repository (as a user types it)."""
    return sorted(str(p.relative_to(REPO)) for p in FILES.iterdir() if p.name != "index.json")


def f(name: str) -> str:
    return f"fixtures/files/{name}"


@pytest.fixture
def dcp(dcp_world1: Path) -> Path:
    """A DCP folder written by `torch.distributed.checkpoint.save` (world size 1)."""
    return dcp_world1


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(REPO)
    yield


def widest_line(args: list[str], columns: int) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, env={"COLUMNS": str(columns)}, catch_exceptions=False)
    assert result.exit_code in (0, 1, 2), (args, result.stderr)
    assert result.stdout or result.exit_code == 2, (args, result.stderr)
    lines = result.stdout.splitlines() or [""]
    widest = max(lines, key=len)
    return len(widest), widest


def assert_fits(commands: list[list[str]], columns: int) -> None:
    too_wide = []
    for args in commands:
        width, line = widest_line(args, columns)
        if width > columns:
            too_wide.append(f"{' '.join(args)}: {width}: {line}")
    assert not too_wide, "\n".join(too_wide)


INSPECT_OPTIONS = [["--stats"], ["--tree"], ["--tree", "--full-prefix"], ["--all"], ["-v"], ["--sort", "size"]]
INSPECT_WITH_OPTIONS = [
    "cnn_whole_model.pth",
    "general_checkpoint.tar",
    "timm_checkpoint_with_ema.pth.tar",
    "lightning.ckpt",
    "dtypes.pt",
    "exotic_tensors.pt",
    "nested_containers_whole_model.pt",
    "tied_lm_whole_model.pth",
    "sharded_safetensors",
    "cnn_scripted.pt",
    "deepspeed",
]


@pytest.mark.slow
@pytest.mark.parametrize("columns", WIDTHS)
def test_inspect_fits(columns: int, dcp: Path, in_repo: None) -> None:
    commands = [["inspect", path] for path in fixture_paths()]
    commands += [["inspect", f(name), *options] for name in INSPECT_WITH_OPTIONS for options in INSPECT_OPTIONS]
    commands += [["inspect", str(dcp), *options] for options in [[], *INSPECT_OPTIONS]]
    commands += [["inspect", f("general_checkpoint.tar"), "--root", "optimizer_state_dict"]]  # an error
    assert_fits(commands, columns)


@pytest.mark.slow
@pytest.mark.parametrize("columns", WIDTHS)
def test_scan_and_check_fit(columns: int, dcp: Path, in_repo: None) -> None:
    paths = fixture_paths()
    commands = [["scan", path] for path in paths]
    commands += [["scan", *paths], ["scan", str(dcp)], ["scan", *paths[:4]], ["scan", "README.md", *paths[:2]]]
    commands += [["check", path] for path in paths]
    commands += [["check", *paths], ["check", str(dcp), "--finite", "--cpu-only"]]
    commands += [["check", f(name), "--cpu-only"] for name in ("cnn_state_dict_cuda0.pth", "nn_state_dict_cuda1.pth")]
    commands += [
        ["check", f("dataparallel_state_dict.pth"), "--model", CNN_SPEC],
        ["check", f("cnn_state_dict.pth"), f("dataparallel_state_dict.pth"), "--model", CNN_SPEC],
        ["check", f("nn_state_dict.pt"), "--model", CNN_SPEC],
        ["check", f("compiled_state_dict.pth"), "--like", f("cnn_state_dict.pth")],
        ["check", f("cnn_state_dict.pth"), "--finite", "--strict"],
    ]
    assert_fits(commands, columns)


DIFF_PAIRS = [
    ("general_checkpoint.tar", "general_checkpoint_float_loss.pt"),
    ("cnn_state_dict.pth", "cnn.safetensors"),
    ("cnn_state_dict.pth", "dataparallel_state_dict.pth"),
    ("cnn_state_dict.pth", "nn_state_dict.pt"),
    ("timm_checkpoint_with_ema.pth.tar", "checkpoint.pth.tar"),
    ("dtypes.pt", "dtypes_big_endian.pt"),
    ("lightning.ckpt", "lightning_namespace_hparams.ckpt"),
    ("tied_lm_state_dict.pth", "tied_lm_whole_model.pth"),
]


@pytest.mark.slow
@pytest.mark.parametrize("columns", WIDTHS)
def test_diff_and_optimizer_fit(columns: int, dcp: Path, in_repo: None) -> None:
    commands = [["diff", f(a), f(b), *options] for a, b in DIFF_PAIRS for options in ([], ["--all"], ["--keys-only"])]
    commands += [
        ["diff", str(dcp), str(dcp), "--all"],
        ["diff", f("cnn_state_dict.pth"), f("cnn.safetensors"), "--atol", "1e-3"],
    ]
    commands += [["optimizer", path] for path in fixture_paths()]
    commands += [["optimizer", str(dcp)], ["optimizer", f("cnn_model_optimizer.pt"), "--model", CNN_SPEC]]
    assert_fits(commands, columns)


@pytest.mark.slow
@pytest.mark.parametrize("columns", WIDTHS)
def test_convert_and_remap_fit(columns: int, dcp: Path, tmp_path: Path, in_repo: None) -> None:
    out = tmp_path
    commands = [
        ["convert", f("cnn_whole_model.pth"), str(out / "a.safetensors")],
        ["convert", f("general_checkpoint.tar"), str(out / "b.safetensors"), "--dtype", "bf16"],
        ["convert", f("dtypes.pt"), str(out / "c.pth"), "--dtype", "fp16"],
        ["convert", f("tied_lm_state_dict.pth"), str(out / "d.safetensors"), "--dedupe", "--shard-size", "10KB"],
        [
            "convert",
            f("dataparallel_state_dict.pth"),
            str(out / "e.pth"),
            "--keep-structure",
            "--strip-prefix",
            "module.",
        ],
        ["convert", f("general_checkpoint.tar"), str(out / "f.safetensors"), "--root", "optimizer_state_dict"],
        ["convert", str(dcp), str(out / "g.safetensors"), "--dtype", "bf16"],
        ["convert", f("cnn_state_dict.pth"), str(out / "h"), "--to", "dcp"],
        ["remap", f("cnn_state_dict_cuda0.pth"), str(out / "i.pth"), "--device", "cpu"],
        ["remap", f("cnn_model_optimizer_cuda0.pt"), str(out / "j.pt"), "--map", "cuda:0=cpu"],
    ]
    assert_fits(commands, columns)


@pytest.mark.slow
@pytest.mark.parametrize("columns", WIDTHS)
def test_reference_fits(columns: int, tmp_path: Path, in_repo: None) -> None:
    train = ["reference", "train", "--model", "cnn", "--epochs", "1", "--steps-per-epoch", "2"]
    assert_fits([[*train, "--out", str(tmp_path / "set")]], columns)
    assert_fits([["reference", "check", "fixtures/reference/cnn", "--resume-epochs", "0"]], columns)


def run_at(args: list[str], columns: int) -> str:
    result = CliRunner().invoke(main, args, env={"COLUMNS": str(columns)}, catch_exceptions=False)
    assert result.exit_code in (0, 1), result.stderr
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 200])
def test_scan_names_stay_whole(dcp: Path, columns: int) -> None:
    """The globals of a DCP `.metadata` (`torch.distributed.checkpoint.metadata.…` many
    times, too long for a table with room for the reasons at 80 columns) are each shown
    whole, as JSON lists them: a table where they fit, one global per entry where not."""
    import json

    (scanned,) = json.loads(run_at(["scan", str(dcp), "--format", "json"], columns))["files"]
    names = {g["module"] + "." + g["name"] for g in scanned["globals"]}
    out = run_at(["scan", str(dcp)], columns)
    if "global " in out:  # the table: a name starts each row
        lines = out[out.index("global ") :].splitlines()[2:]
        shown = [line.split()[0] for line in lines if line[:1] not in (" ", "(", "") and line.strip()]
    else:  # an entry per global: "  NAME (verdict; uses)"
        lines = out[out.index("globals (verdict; uses)") :].splitlines()[1:]
        shown = [line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("    ")]
    assert sorted(shown) == sorted(names)
    assert max(len(line) for line in out.splitlines()) <= columns


@pytest.mark.slow
def test_dcp_chunks_note_names_json(dcp: Path) -> None:
    """Only JSON lists every chunk: the note under a cut chunk table says so."""
    out = run_at(["inspect", str(dcp), "-v", "--all"], 60)
    assert "--format csv shows all" not in out.split("offsets")[1]
    assert max(len(line) for line in out.splitlines()) <= 60


def test_diff_details_keep_their_numbers(in_repo: None) -> None:
    """At 80 columns a value row's detail wraps: the max abs difference is torch's, whole."""
    import torch

    a, b = f("general_checkpoint.tar"), f("general_checkpoint_float_loss.pt")
    weights_a = torch.load(a, weights_only=True)["model_state_dict"]
    weights_b = torch.load(b, weights_only=True)["model_state_dict"]
    text = " ".join(run_at(["diff", a, b], 80).split())
    for key, tensor in weights_a.items():
        max_abs = (tensor.double() - weights_b[key].double()).abs().max().item()
        assert re.search(rf"{re.escape(key)} values differ in .*? max abs {float(f'{max_abs:.6g}'):.6g},", text), key


DEEPSPEED = ["fixtures/deepspeed/zero3_bf16_3ranks", "fixtures/deepspeed/zero1_fp32_2ranks"]
MEGATRON = ["fixtures/megatron/gpt_tp2", "fixtures/megatron/nemo2"]
RUN_FOLDERS = [*DEEPSPEED, *MEGATRON]
FOLDER_INSPECT_OPTIONS = [[], ["--stats"], ["--tree"], ["--all"], ["-v"], ["-v", "--all"], ["--unstack"]]


@pytest.mark.slow
@pytest.mark.parametrize("columns", WIDTHS)
def test_run_folders_fit(columns: int, tmp_path: Path, in_repo: None) -> None:
    """DeepSpeed ZeRO and Megatron / NeMo 2 run folders, through every command, and folder
    scans with one entry per file (a run folder, the bundled files, every run folder)."""
    commands = [["inspect", path, *options] for path in RUN_FOLDERS for options in FOLDER_INSPECT_OPTIONS]
    commands += [["inspect", MEGATRON[0], "--stats", "--unstack"], ["inspect", MEGATRON[1], "--tree", "--unstack"]]
    commands += [[command, path] for command in ("scan", "check", "optimizer") for path in RUN_FOLDERS]
    commands += [["check", path, "--finite", "--cpu-only"] for path in (DEEPSPEED[0], MEGATRON[0])]
    commands += [["scan", "fixtures/files"], ["scan", "fixtures/deepspeed"], ["scan", "fixtures/megatron"]]
    commands += [
        ["diff", DEEPSPEED[0], "fixtures/deepspeed/zero2_bf16_3ranks", "--all"],
        ["diff", DEEPSPEED[1], "fixtures/deepspeed/zero2_fp32_2ranks", "--all"],
        ["diff", MEGATRON[0], "fixtures/megatron/gpt_tp1", "--unstack"],
        ["diff", MEGATRON[0], MEGATRON[1], "--all"],  # --all of a Megatron pair takes seconds: once
    ]
    commands += [["convert", path, str(tmp_path / f"{n}.safetensors"), "--dtype", "bf16"] for n, path in
                 enumerate(RUN_FOLDERS)]  # fmt: skip
    commands += [["convert", MEGATRON[0], str(tmp_path / "unstacked.safetensors"), "--unstack"]]
    assert_fits(commands, columns)


@pytest.mark.slow
def test_megatron_keys_stay_apart(in_repo: None) -> None:
    """At 80 columns each model key of a Megatron folder (the keys torch's own DCP load
    returns, kept in the ground truth file, under the `model` root) is cut to a form of its own, whole parts left
    out: `…word_embeddings.weight` and `…position_embeddings.weight`, not `model.em…` twice."""
    from safetensors import safe_open

    with safe_open(str(REPO / "fixtures" / "megatron" / "gpt_tp2.groundtruth.safetensors"), "pt") as truth:
        keys = [k.removeprefix("model.") for k in truth.keys() if k.startswith("model.")]  # noqa: SIM118
    out = run_at(["inspect", MEGATRON[0]], 80)
    table = out[out.index("\nkey ") + 1 :].splitlines()[2:]
    shown = [line.split()[0] for line in table if line[:1] not in (" ", "(") and line.strip()]
    assert len(shown) == len(keys) == len(set(shown)), shown
    assert all(any(matches_cut(s, k) for k in keys) for s in shown), shown
    assert all(any(matches_cut(s, k) for s in shown) for k in keys), shown
    assert max(len(line) for line in out.splitlines()) <= 80


@pytest.mark.slow
def test_stats_keys_whole_when_cuts_read_alike(in_repo: None) -> None:
    """`--stats` at 80 columns leaves a key too little room to tell rows apart: each key,
    as torch loads it, stands whole on its own line above its row of numbers."""
    from safetensors import safe_open

    with safe_open(str(REPO / "fixtures" / "megatron" / "gpt_tp2.groundtruth.safetensors"), "pt") as truth:
        keys = {k.removeprefix("model.") for k in truth.keys() if k.startswith("model.")}  # noqa: SIM118
    out = run_at(["inspect", MEGATRON[0], "--stats"], 80)
    lines = out.splitlines()
    table = lines[lines.index("key") :]
    assert {line for line in table if line[:1] not in (" ", "(", "k")} == keys
    assert max(len(line) for line in out.splitlines()) <= 80


@pytest.mark.slow
@pytest.mark.parametrize("columns", WIDTHS)
def test_a_folder_scan_names_every_file_whole(in_repo: None, columns: int) -> None:
    """The summary of a folder scan shows each file's path under the folder, said once,
    so no two files read alike however narrow the terminal (every path is found whole)."""
    import json

    runner = CliRunner()
    listed = runner.invoke(main, ["scan", "fixtures/deepspeed", "--format", "json"], env={"COLUMNS": str(columns)})
    paths = [Path(entry["path"]).relative_to("fixtures/deepspeed") for entry in json.loads(listed.stdout)["files"]]
    text = runner.invoke(main, ["scan", "fixtures/deepspeed"], env={"COLUMNS": str(columns)}).stdout
    summary = text[text.index("files under fixtures/deepspeed/") :]
    assert all(re.search(rf"^{re.escape(str(p))}(\s|$)", summary, re.M) for p in paths), summary
    assert max(len(line) for line in text.splitlines()) <= columns
