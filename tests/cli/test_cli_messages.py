"""Small things people hit first: `--dtype` aliases, write errors that name the destination
(not the hidden temporary file), and nothing left behind when a write fails."""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result
from safetensors import safe_open

from ckpttool.dtypes import cast_target

Cli = Callable[..., Result]
SOURCE = Path(__file__).resolve().parents[2] / "fixtures" / "files" / "cnn_state_dict.pth"


@pytest.mark.parametrize(
    ("alias", "dtype"),
    [
        ("fp16", torch.float16),
        ("half", torch.float16),
        ("bf16", torch.bfloat16),
        ("BF16", torch.bfloat16),
        ("torch.bfloat16", torch.bfloat16),
        ("fp32", torch.float32),
        ("float", torch.float32),
        ("float16", torch.float16),
    ],
)
def test_dtype_aliases(cli: Cli, tmp_path: Path, alias: str, dtype: torch.dtype) -> None:
    out = tmp_path / "out.safetensors"
    result = cli("convert", SOURCE, out, "--dtype", alias)
    assert result.exit_code == 0, result.stderr
    with safe_open(str(out), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}


def test_torch_agrees_with_the_aliases() -> None:
    """`half` and `float` mean what torch means by them."""
    assert cast_target("half") == str(torch.half).removeprefix("torch.")
    assert cast_target("float") == str(torch.float).removeprefix("torch.")


@pytest.mark.parametrize("value", ["fp8", "int8", "float64", ""])
def test_unknown_dtype_is_a_usage_error(cli: Cli, tmp_path: Path, value: str) -> None:
    result = cli("convert", SOURCE, tmp_path / "out.safetensors", "--dtype", value)
    assert result.exit_code == 2
    assert "--dtype" in result.stderr and "bf16" in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def _small_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, resource.RLIM_INFINITY))


@pytest.mark.parametrize("command", [["convert", "--to", "safetensors"], ["convert", "--to", "pth"], ["remap"]])
def test_write_errors_name_the_destination(tmp_path: Path, command: list[str]) -> None:
    """A file size limit (as a full disk would) stops the write: the one stderr line names
    DST, not `.DST.<random>.ckpttool-tmp`, and no temporary file is left."""
    dst = tmp_path / "out.bin"
    args = [sys.executable, "-m", "ckpttool", command[0], str(SOURCE), str(dst), *command[1:]]
    if command[0] == "remap":
        args += ["--device", "cpu"]
    done = subprocess.run(args, capture_output=True, text=True, preexec_fn=_small_file_limit, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"ckpttool: error: {dst}: File too large"]
    assert list(tmp_path.iterdir()) == []


def test_scan_allowlist_line_wraps_and_stays_python(cli: Cli) -> None:
    """At 60 columns the import statements and the add_safe_globals line wrap inside their
    brackets; pasted, they are the same Python as the one-line forms."""
    import ast
    import textwrap

    from click.testing import CliRunner

    from ckpttool.cli import main

    path = SOURCE.parent / "nested_containers_whole_model.pt"

    def allowlist(env: dict[str, str]) -> tuple[str, int]:
        out = CliRunner().invoke(main, ["scan", str(path)], env=env).stdout
        start = out.index("to load with torch.load(weights_only=True):\n")
        pasted = textwrap.dedent(out[start:].split("\n", 1)[1])
        return pasted, max(len(line) for line in out.splitlines())

    whole, _ = allowlist({"COLUMNS": ""})
    wrapped, widest = allowlist({"COLUMNS": "60"})
    assert len(whole.strip().splitlines()) < len(wrapped.strip().splitlines())
    assert widest <= 60
    assert ast.dump(ast.parse(wrapped)) == ast.dump(ast.parse(whole))
