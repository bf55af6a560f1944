"""Entries held in pickled objects that are containers or values, as packages save them
beside their weights: a LightningModule's `hparams` (Lightning's AttributeDict, filled by
SETITEMS) and `torch.__version__` (a TorchVersion, a str subclass built by NEWOBJ from its
string), as pyannote's checkpoints record it. inspect shows the items and the string that
torch.load gives back, not only the class."""

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
versions = {"torch": torch.__version__}
torch.save({"state_dict": {"w": torch.ones(2)}, "hyperparameters": hparams, "versions": versions}, sys.argv[1])
"""
# The items as torch.load (weights_only=False, the stand-in importable) gives them back.
LOAD = """
import json, sys, torch
from standins import register_library_names
register_library_names()
loaded = torch.load(sys.argv[1], weights_only=False)
hparams, version = loaded["hyperparameters"], loaded["versions"]["torch"]
name = lambda cls: f"{cls.__module__}.{cls.__qualname__}"
print(json.dumps({"class": name(type(hparams)), "items": dict(hparams),
                  "version_class": name(type(version)), "version": str(version)}))
"""


def _run(code: str, path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout


def test_entries_in_pickled_objects_show_their_values(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _run(SAVE, path)
    loaded = json.loads(_run(LOAD, path))
    assert loaded["class"] == "lightning.fabric.utilities.data.AttributeDict"

    entries = cli_json(cli("inspect", path, "--format", "json"))["entries"]
    assert entries["hyperparameters"] == {"__class__": loaded["class"], **loaded["items"]}
    assert entries["versions"] == {"torch": {"__class__": loaded["version_class"], "args0": loaded["version"]}}

    table = CliRunner().invoke(main, ["inspect", str(path)], env={"COLUMNS": "80"}, catch_exceptions=False).stdout
    assert all(len(line) <= 80 for line in table.splitlines())
    words = " ".join(table.split())  # the entry wraps at the terminal's width
    assert '"lr": 0.001' in words and '"layers": [4, 8]' in words


SAVE_HYDRA = """
import sys, torch
from standins import DictConfig, ListConfig, register_library_names
register_library_names()
config = DictConfig({"lr": 1e-3, "layers": [40, 30], "encoder": {"activation": "leaky", "dropout": 0.2}})
groups = [{"lr": 1e-3, "betas": ListConfig([0.9, 0.999]), "eps": 1e-8, "params": [0]}]
optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}}, "param_groups": groups}
checkpoint = {"state_dict": {"w": torch.ones(2)}, "hyper_parameters": config, "optimizer_states": [optimizer]}
torch.save(checkpoint, sys.argv[1])
"""
LOAD_HYDRA = """
import json, sys, torch
from standins import register_library_names
register_library_names()
loaded = torch.load(sys.argv[1], weights_only=False)
betas = loaded["optimizer_states"][0]["param_groups"][0]["betas"]
print(json.dumps({"hyper_parameters": loaded["hyper_parameters"].to_container(), "betas": betas.to_container()}))
"""


def test_hydra_configs_show_their_values(cli: Callable[..., Result], tmp_path: Path) -> None:
    """A Lightning checkpoint of a Hydra-configured model (pyannote's, as whisperx bundles
    it): OmegaConf containers as hyper-parameters and as an optimizer's betas are shown as
    the values they hold, not as OmegaConf's nodes and metadata."""
    path = tmp_path / "hydra.ckpt"
    _run(SAVE_HYDRA, path)
    truth = json.loads(_run(LOAD_HYDRA, path))

    entries = cli_json(cli("inspect", path, "--format", "json"))["entries"]
    assert entries["hyper_parameters"] == truth["hyper_parameters"]
    (optimizer,) = cli_json(cli("optimizer", path, "--format", "json"))["optimizers"]
    assert optimizer["param_groups"][0]["betas"] == truth["betas"] == [0.9, 0.999]
