"""Entries held in a pickled dict subclass, as a package that saves its LightningModule's
`hparams` (Lightning's AttributeDict, filled by SETITEMS) beside its weights writes them:
inspect shows the items torch.load gives back, not only the class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result
from support.cli import cli_json

from ckpttool.cli import main

HERE = Path(__file__).resolve().parent
SAVE = """
import sys, torch
from standins import AttributeDict, register_library_names
register_library_names()
hparams = AttributeDict(lr=1e-3, layers=[4, 8], config={"features": ["element", "degree"]})
torch.save({"state_dict": {"w": torch.ones(2)}, "hyperparameters": hparams}, sys.argv[1])
"""
# The items as torch.load (weights_only=False, the stand-in importable) gives them back.
LOAD = """
import json, sys, torch
from standins import register_library_names
register_library_names()
hparams = torch.load(sys.argv[1], weights_only=False)["hyperparameters"]
print(json.dumps({"class": f"{type(hparams).__module__}.{type(hparams).__qualname__}", "items": dict(hparams)}))
"""


def _run(code: str, path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout


def test_a_dict_subclass_entry_shows_its_items(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _run(SAVE, path)
    loaded = json.loads(_run(LOAD, path))
    assert loaded["class"] == "lightning.fabric.utilities.data.AttributeDict"

    entries = cli_json(cli("inspect", path, "--format", "json"))["entries"]
    assert entries["hyperparameters"] == {"__class__": loaded["class"], **loaded["items"]}

    table = CliRunner().invoke(main, ["inspect", str(path)], env={"COLUMNS": "80"}, catch_exceptions=False).stdout
    assert all(len(line) <= 80 for line in table.splitlines())
    words = " ".join(table.split())  # the entry wraps at the terminal's width
    assert '"lr": 0.001' in words and '"layers": [4, 8]' in words
