"""Small answers a new user checks against torch first, each against torch's own answer:
a text file is called text, `diff --all` compares an optimizer state that one file has
empty, `load()` keeps `requires_grad` and parameters, CSV steps are integers, `convert
--root` takes an optimizer state in every format, and the README quotes torch 2.14.1."""

from __future__ import annotations

import csv
import io
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from conftest import REPO, cli_json
from safetensors.torch import load_file
from support.docs import DOCUMENTATION

from ckpttool.materialize import load

Cli = Callable[..., Result]
FILES = REPO / "fixtures" / "files"


# The JSON line has `{` as its ninth byte, as a safetensors file has after its 8-byte length.
TEXTS = ["epoch 5: loss 0.1\nepoch 6: loss 0.09\n", "notes about the run\n", "(draft)\n", '{"root": {"type": "ref"}}\n']


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("command", ["inspect", "scan", "check"])
def test_a_text_file_is_called_text(cli: Cli, tmp_path: Path, text: str, command: str) -> None:
    """Text whose first byte is a pickle opcode's (`e`, `n`, `(`) is not reported as a
    broken pickle; torch.load refuses it too."""
    path = tmp_path / "notes.txt"
    path.write_text(text)
    with pytest.raises((pickle.UnpicklingError, RuntimeError, EOFError, ValueError, IndexError, KeyError)):
        torch.load(path, weights_only=True)
    result = cli(command, path)
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    first = text.splitlines()[0]
    assert line == f"ckpttool: error: {path}: not a checkpoint: it is text, starting {first!r}"


def train(steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    return {"epoch": steps, "model": model.state_dict(), "optimizer": optimizer.state_dict()}


def test_diff_all_compares_an_optimizer_state_empty_in_one_file(cli: Cli, tmp_path: Path) -> None:
    a, b = tmp_path / "e0.pth.tar", tmp_path / "e3.pth.tar"
    torch.save(train(0), a)
    torch.save(train(3), b)
    state_a, state_b = torch.load(a)["optimizer"]["state"], torch.load(b)["optimizer"]["state"]
    assert state_a == {} and len(state_b) == 2
    report = cli_json(cli("diff", a, b, "--all", "--format", "json"))
    (row,) = [r for r in report["entries_mismatch"] if r["key"] == "optimizer.state"]
    assert "absent" not in row and row["a"] == {}
    assert list(row["b"]) == [str(i) for i in state_b]
    assert all(list(row["b"][str(i)]) == list(s) for i, s in state_b.items())
    only = [f"optimizer.state.{i}.{name}" for i, s in state_b.items() for name in s]
    assert report["only_in_b"] == only
    text = cli("diff", a, b, "--all").stdout
    assert re.search(r"^optimizer\.state\s+entry\s+\{\} vs \{2 entries\}$", text, re.M), text
    assert "(absent)" not in text


def test_load_keeps_requires_grad_and_parameters_as_torch_load(tmp_path: Path) -> None:
    weight = torch.randn(3, requires_grad=True)
    loss = (weight * 2).sum()
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    trained = torch.nn.Parameter(torch.zeros(2))
    saved = {"loss": loss, "frozen": frozen, "trained": trained, "plain": torch.arange(3), "again": [trained]}
    path = tmp_path / "grads.pt"
    torch.save(saved, path)
    truth, ours = torch.load(path, weights_only=True), load(str(path))
    for key in ("loss", "frozen", "trained", "plain"):
        assert type(ours[key]) is type(truth[key]), key
        assert ours[key].requires_grad == truth[key].requires_grad, key
        assert torch.equal(ours[key].detach(), truth[key].detach()), key
    assert truth["loss"].requires_grad and ours["loss"].requires_grad
    assert ours["again"][0] is ours["trained"]  # one tensor under two names, as torch gives it


def test_optimizer_csv_prints_steps_as_integers(cli: Cli) -> None:
    path = FILES / "general_checkpoint.tar"
    state = torch.load(path, weights_only=True)["optimizer_state_dict"]["state"]
    rows = list(csv.DictReader(io.StringIO(cli("optimizer", path, "--format", "csv").stdout)))
    assert [row["step"] for row in rows] == [str(int(s["step"].item())) for s in state.values()]
    assert all(float(s["step"].item()).is_integer() for s in state.values())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_convert_takes_an_optimizer_state_root(cli: Cli, tmp_path: Path, suffix: str) -> None:
    """As for a DCP folder (`--root optim.state`): the tensors under the root, by dotted path."""
    source = FILES / "general_checkpoint.tar"
    out = tmp_path / f"optimizer{suffix}"
    result = cli("convert", source, out, "--root", "optimizer_state_dict")
    assert result.exit_code == 0, result.stderr
    assert "is no state_dict" in result.stderr
    state = torch.load(source, weights_only=True)["optimizer_state_dict"]["state"]
    expected = {f"state.{i}.{name}": t for i, s in state.items() for name, t in s.items()}
    written = load_file(out) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    assert list(written) == list(expected)
    assert all(torch.equal(written[k], v) for k, v in expected.items())


def test_readme_quotes_what_torch_load_prints() -> None:
    with pytest.raises(pickle.UnpicklingError) as caught:
        torch.load(FILES / "cnn_whole_model.pth", weights_only=True)
    message = " ".join(str(caught.value).split())
    readme = " ".join(DOCUMENTATION.split())
    quoted = re.search(r"`UnpicklingError: Weights only load failed … WeightsUnpickler error: ([^`]*)`", readme)
    assert quoted is not None
    assert message.startswith("Weights only load failed")
    assert f"WeightsUnpickler error: {quoted.group(1)}" in message


def test_load_ignores_requires_grad_claimed_for_integers(tmp_path: Path) -> None:
    """torch cannot make an integer tensor that requires grad; a file that says so anyway
    (its storage type edited from float to int) loads with requires_grad False, not an error."""
    import zipfile

    path = tmp_path / "grads.pt"
    torch.save({"p": torch.nn.Parameter(torch.arange(3.0)), "t": torch.arange(3.0).requires_grad_()}, path)
    edited = tmp_path / "ints.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(edited, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                assert b"torch\nFloatStorage\n" in data
                data = data.replace(b"torch\nFloatStorage\n", b"torch\nIntStorage\n")
            target.writestr(info.filename, data)
    loaded = load(str(edited))
    assert {k: (t.dtype, t.requires_grad) for k, t in loaded.items()} == {
        "p": (torch.int32, False),
        "t": (torch.int32, False),
    }
