"""The files a trainer leaves beside the weights: an optimizer's state_dict alone (Hugging
Face Trainer's `checkpoint-N/optimizer.pt`, accelerate's `save_state` `optimizer.bin`), and
training dicts whose weights sit under a name ckpttool does not know, after the optimizer.
Each file is made here with torch as those libraries make it (`torch.save` of
`optimizer.state_dict()`; checked against the files transformers 5.25's Trainer and
accelerate 1.16's `save_state` wrote: the same pickle, a `state` of per-parameter
`{step, exp_avg, exp_avg_sq}` and the `param_groups`) and compared with torch.load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result
from support.cli import assert_one_error_line, cli_json
from support.groundtruth import torch_load_trusted
from torch import nn

Cli = Callable[..., Result]


def _stepped_adamw() -> tuple[nn.Module, torch.optim.Optimizer]:
    """Trainer's AdamW: weights in one group (decayed), biases and norms in another."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}])
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.fixture
def optimizer_file(tmp_path: Path) -> Path:
    _, optimizer = _stepped_adamw()
    path = tmp_path / "optimizer.pt"
    torch.save(optimizer.state_dict(), path)
    return path


def test_an_optimizer_file_holds_no_weights(cli: Cli, optimizer_file: Path) -> None:
    """Before, a parameter's `state.0` ({step, exp_avg, exp_avg_sq}) was taken for the weights."""
    truth = torch_load_trusted(optimizer_file)
    assert set(truth) == {"state", "param_groups"}
    report = cli_json(cli("inspect", optimizer_file, "--format", "json"))
    assert (report["weights"]["root"], report["weights"]["tensors"]) == (None, [])
    every = {t["key"] for t in report["tensors"]}
    assert every == {f"state.{i}.{name}" for i, s in truth["state"].items() for name in s}
    assert any("optimizer's state_dict" in note for note in report["notes"])
    text = cli("inspect", optimizer_file).stdout
    assert "weights:             none found" in text and "`ckpttool optimizer` shows it" in text
    described = cli_json(cli("optimizer", optimizer_file, "--format", "json"))["optimizers"]
    assert [(o["path"], o["type"], len(o["state"])) for o in described] == [("", "AdamW", len(truth["state"]))]


def test_converting_an_optimizer_file_says_what_it_is(cli: Cli, optimizer_file: Path, tmp_path: Path) -> None:
    result = cli("convert", optimizer_file, tmp_path / "out.safetensors")
    assert_one_error_line(result, "no weights found", "optimizer's state_dict", path=optimizer_file)
    assert not (tmp_path / "out.safetensors").exists()


def test_weights_under_an_unknown_name_after_the_optimizer(cli: Cli, tmp_path: Path) -> None:
    """{'optimizer': ..., 'encoder': state_dict}: the search passes over the optimizer."""
    model, optimizer = _stepped_adamw()
    path = tmp_path / "train.pt"
    torch.save({"optimizer": optimizer.state_dict(), "encoder": model.state_dict(), "step": 1}, path)
    truth = torch_load_trusted(path)["encoder"]
    report = cli_json(cli("inspect", path, "--format", "json"))
    assert report["weights"]["root"] == "encoder"
    shown = [(t["key"], t["dtype"], t["shape"]) for t in report["weights"]["tensors"]]
    assert shown == [(k, str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in truth.items()]
    described = cli_json(cli("optimizer", path, "--format", "json"))["optimizers"]
    assert [(o["path"], o["type"]) for o in described] == [("optimizer", "AdamW")]


def _rng_states(tmp_path: Path) -> dict[str, Path]:
    """The RNG records trainers save beside the weights, as transformers 5.25's Trainer
    (`checkpoint-N/rng_state.pth`) and accelerate 1.16's `save_state`
    (`random_states_0.pkl`, written with torch.save) write them on a CPU machine."""
    import random

    import numpy as np

    files = {
        "rng_state.pth": {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()},
        "random_states_0.pkl": {
            "step": 0,
            "random_state": random.getstate(),
            "numpy_random_seed": np.random.get_state(),
            "torch_manual_seed": torch.get_rng_state(),
        },
    }
    for name, state in files.items():
        torch.save(state, tmp_path / name)
    return {name: tmp_path / name for name in files}


@pytest.mark.parametrize("name", ["rng_state.pth", "random_states_0.pkl"])
def test_an_rng_state_holds_no_weights(cli: Cli, tmp_path: Path, name: str) -> None:
    """Before, `torch.get_rng_state()`'s bytes were taken for a one-tensor state_dict."""
    path = _rng_states(tmp_path)[name]
    truth = torch_load_trusted(path)
    (rng,) = [k for k, v in truth.items() if isinstance(v, torch.Tensor)]
    report = cli_json(cli("inspect", path, "--format", "json"))
    assert (report["weights"]["root"], report["weights"]["tensors"]) == (None, [])
    assert [(t["key"], t["dtype"], t["shape"]) for t in report["tensors"]] == [(rng, "uint8", list(truth[rng].shape))]
    assert cli("check", path).exit_code == 0
    assert_one_error_line(cli("convert", path, tmp_path / "out.safetensors"), "no weights found", path=path)


def test_a_mapping_of_weights_among_other_values_is_still_found(cli: Cli, tmp_path: Path) -> None:
    """The search's last resort keeps taking a mapping with floating tensors in it."""
    path = tmp_path / "mixed.pt"
    torch.save({"net": {"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2), "name": "fc"}, "step": 3}, path)
    truth = torch_load_trusted(path)["net"]
    report = cli_json(cli("inspect", path, "--format", "json"))
    assert report["weights"]["root"] == "net"
    shown = [(t["key"], t["dtype"], t["shape"]) for t in report["weights"]["tensors"]]
    assert shown == [(k, "float32", list(v.shape)) for k, v in truth.items() if isinstance(v, torch.Tensor)]


def _gan(extra: dict[str, nn.Module]) -> tuple[dict[str, object], nn.Module]:
    """A GAN's checkpoint as CycleGAN- and stylegan2-style scripts save it: each network's
    state_dict and each optimizer's beside them, under names of their own."""
    torch.manual_seed(0)
    g, d = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 4)), nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.RMSprop(d.parameters())
    d(g(torch.randn(2, 4))).sum().backward()
    opt_g.step()
    opt_d.step()
    state = {"G": g.state_dict(), "D": d.state_dict(), "optG": opt_g.state_dict(), "optD": opt_d.state_dict()}
    return {**state, **{k: m.state_dict() for k, m in extra.items()}}, d


def test_a_second_networks_optimizer_is_named_from_that_network(cli: Cli, tmp_path: Path) -> None:
    """The weights are G's; optD's parameters are named from D, the one network they fit."""
    state, d = _gan({})
    torch.save(state, tmp_path / "gan.pt")
    described = cli_json(cli("optimizer", tmp_path / "gan.pt", "--format", "json"))["optimizers"]
    by_path = {o["path"]: o for o in described}
    assert [s["name"] for s in by_path["optD"]["state"]] == [n for n, _ in d.named_parameters()]
    assert by_path["optD"]["names"] == "file" and "of 'D'" in by_path["optD"]["notes"][0]
    assert [s["name"] for s in by_path["optG"]["state"]] == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_two_networks_that_fit_leave_the_names_unresolved(cli: Cli, tmp_path: Path) -> None:
    """A copy of D (an EMA, a frozen teacher) fits optD as well: which one it trained is not
    known, so no name is given."""
    state, d = _gan({"D_ema": nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))})
    torch.save(state, tmp_path / "gan.pt")
    described = cli_json(cli("optimizer", tmp_path / "gan.pt", "--format", "json"))["optimizers"]
    (opt_d,) = [o for o in described if o["path"] == "optD"]
    assert [s["name"] for s in opt_d["state"]] == [None] * len(list(d.parameters()))
    assert opt_d["names"] is None and "names not resolved" in opt_d["notes"][0]


class ConfigNode:
    """OmegaConf's DictConfig as it pickles (omegaconf 2.3, the config Hydra hands a
    LightningModule, saved in `hyper_parameters`): NEWOBJ and BUILD of a `__dict__` whose
    `_content` holds the child nodes and whose `_parent` points back at the node above."""

    def __init__(self, parent: ConfigNode | None, content: dict[str, object]) -> None:
        self._parent = parent
        self._content: dict[str, object] = {}
        for key, value in content.items():
            self._content[key] = ConfigNode(self, value) if isinstance(value, dict) else value


def test_a_config_pointing_at_its_parent_is_shown_once(cli: Cli, tmp_path: Path) -> None:
    """Each child's `_parent` was unrolled to the depth bound: a 3 KiB Lightning+Hydra
    checkpoint gave 276 KB of JSON; the way back up is now `<cycle>`."""
    model = nn.Linear(4, 2)
    groups = {f"group{g}": {f"key{k}": {"a": k, "b": [k, k + 1]} for k in range(4)} for g in range(3)}
    path = tmp_path / "hydra.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"cfg": ConfigNode(None, groups)}}, path)
    cfg = torch_load_trusted(path)["hyper_parameters"]["cfg"]
    result = cli("inspect", path, "--format", "json")
    assert len(result.stdout) < 20_000, len(result.stdout)
    shown = cli_json(result)["entries"]["hyper_parameters"]["cfg"]
    assert shown["_parent"] is None
    for g, group in shown["_content"].items():
        assert group["_parent"] == "<cycle>"
        for k, node in group["_content"].items():
            assert node["_parent"] == "<cycle>"
            assert node["_content"] == cfg._content[g]._content[k]._content


@pytest.mark.parametrize("name", ["optimizer.pt", "optimizer.bin"])
def test_a_trainer_folder_points_at_its_optimizer_file(cli: Cli, tmp_path: Path, name: str) -> None:
    """HF Trainer's checkpoint-N/ (model.safetensors, optimizer.pt) and accelerate's
    save_state folder (model.safetensors, optimizer.bin): the folder reads as its weights,
    which hold no optimizer; the answer names the file beside them that does."""
    from safetensors.torch import save_file

    model, optimizer = _stepped_adamw()
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    torch.save(optimizer.state_dict(), folder / name)
    result = cli("optimizer", folder)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "no optimizer state in the folder's weights; beside them:",
        f"  ckpttool optimizer {folder / name}",
    ]
    described = cli_json(cli("optimizer", folder / name, "--format", "json"))["optimizers"]
    assert [len(o["state"]) for o in described] == [len(torch_load_trusted(folder / name)["state"])]


def test_a_file_of_no_tensors_says_so(cli: Cli, tmp_path: Path) -> None:
    """A scheduler's state_dict beside the weights (HF Trainer's `scheduler.pt`): convert
    said "name them with --root", which no root can satisfy; it says the file holds none."""
    model, optimizer = _stepped_adamw()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    path = tmp_path / "scheduler.pt"
    torch.save(scheduler.state_dict(), path)
    truth = torch.load(path, weights_only=True)
    assert truth["_step_count"] == 1 and not any(isinstance(v, torch.Tensor) for v in truth.values())
    report = cli_json(cli("inspect", path, "--format", "json"))
    assert (report["weights"]["root"], report["tensors"], report["notes"]) == (None, [], ["the file holds no tensors"])
    line = assert_one_error_line(cli("convert", path, tmp_path / "out.safetensors"), "no weights found", path=path)
    assert line.endswith("no weights found; the file holds no tensors"), line
