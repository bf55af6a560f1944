"""GPU-saved fixtures on a CPU-only machine: storages on `cuda:0` as a GPU run writes
them, read by ckpttool (`inspect`, `remap`, `reference check`) without a GPU."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result

from ckpttool.formats import read_checkpoint
from ckpttool.materialize import load_state_dict
from ckpttool.reference.check import check_fixtures
from ckpttool.reference.compare import DEFAULT_TOLERANCE, compare_logits, comparison_mode
from ckpttool.reference.data import ReferenceData
from ckpttool.reference.fixtures import build_fixtures
from ckpttool.reference.located import host_side_state, saved_as_located, storage_locations
from ckpttool.reference.manifest import read_manifest
from ckpttool.reference.models import get_model_spec
from ckpttool.reference.saving import parse_styles
from ckpttool.reference.train import TrainConfig, compute_probe_logits, train

Cli = Callable[..., Result]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def locations_in(path: Path) -> list[str]:
    return sorted({storage.location for storage in read_checkpoint(str(path)).storages.values()})


def test_the_committed_set_says_how_it_was_made(committed: Path) -> None:
    manifest = read_manifest(committed / "cnn_cuda0")
    # Trained and evaluated on the CPU, written as a GPU run writes its files.
    assert manifest.training.device == "cpu" and manifest.training.located_as == "cuda:0"
    assert (manifest.evaluation.metrics_device, manifest.evaluation.probe_device) == ("cpu", "cpu")
    locations = {record.path: record.locations for record in manifest.files}
    # Adam's step counters stay on the host, as on a real GPU run.
    assert locations == {
        "state_dict.pth": ("cuda:0",),
        "model.pth": ("cuda:0",),
        "model_optimizer.pt": ("cpu", "cuda:0"),
    }
    for name, expected in locations.items():
        assert locations_in(committed / "cnn_cuda0" / name) == list(expected), name


@NO_GPU
def test_torch_itself_needs_a_gpu_for_them(committed: Path) -> None:
    # The ground truth that these files are GPU-located: torch will not restore them.
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(committed / "cnn_cuda0" / "state_dict.pth", weights_only=True)  # noqa: TID251


def test_reference_check_passes_on_the_committed_set(cli: Cli, committed: Path) -> None:
    result = cli("reference", "check", committed / "cnn_cuda0")
    assert result.exit_code == 0, result.stdout
    assert "all " in result.stdout and "checks hold" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("model")]
    assert ["model.pth", "ok", "ok", "ok", "ok"] in rows
    assert ["model_optimizer.pt", "ok", "ok", "ok", "ok"] in rows


def test_inspect_shows_where_each_tensor_was(cli: Cli, committed: Path) -> None:
    path = committed / "cnn_cuda0" / "model_optimizer.pt"
    result = cli("inspect", path, "--all", "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert {tensor["device"] for tensor in report["weights"]["tensors"]} == {"cuda:0"}
    devices = {tensor["key"]: tensor["device"] for tensor in report["tensors"]}
    assert devices["optimizer.state.0.exp_avg"] == "cuda:0"
    assert devices["optimizer.state.0.step"] == "cpu"


def test_remap_to_cpu_gives_a_file_torch_loads_with_the_same_logits(
    cli: Cli, committed: Path, tmp_path: Path, digits: ReferenceData
) -> None:
    source, target = committed / "cnn_cuda0" / "model.pth", tmp_path / "model_cpu.pth"
    result = cli("remap", source, target, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert locations_in(target) == ["cpu"]
    spec = get_model_spec("cnn")
    record = read_manifest(committed / "cnn_cuda0").file("model.pth")
    # torch restores the remapped whole model without map_location (ground truth)...
    with torch.serialization.safe_globals([type(m) for m in spec.create().modules()]):
        restored = torch.load(target, weights_only=True)  # noqa: TID251
    # ...and ckpttool's reader reads the same weights, from either file.
    model = spec.create()
    model.load_state_dict(load_state_dict(str(target)))
    logits = [compute_probe_logits(candidate, digits, spec.input_shape) for candidate in (restored, model)]
    assert torch.equal(logits[0], logits[1])  # the same weights, evaluated twice here
    # Against the numbers recorded on another machine: bit-exact only where the
    # fingerprints agree, else within the tolerance (`reference.compare`).
    mode = comparison_mode(read_manifest(committed / "cnn_cuda0").evaluation.probe_fingerprint, torch.device("cpu"))
    assert compare_logits(record.probe_logits.to_tensor(), logits[0], mode, DEFAULT_TOLERANCE).ok
    assert all(
        torch.equal(a, b)
        for a, b in zip(load_state_dict(str(source)).values(), restored.state_dict().values(), strict=True)
    )


def test_fresh_located_output_passes_the_check(digits: ReferenceData, tmp_path: Path) -> None:
    config = TrainConfig.for_model("nn", epochs=1)
    styles = parse_styles("whole-model,general-checkpoint,safetensors")
    build_fixtures(config, digits, tmp_path, styles, located_as="cuda:1")
    manifest = read_manifest(tmp_path)
    assert [record.locations for record in manifest.files] == [
        ("cuda:1",),
        ("cpu", "cuda:1"),
        (),
    ]
    report = check_fixtures(tmp_path, device="cpu", resume_epochs=0)
    assert report.ok, report.failures


def test_relocation_holds_only_inside_its_context(digits: ReferenceData) -> None:
    run = train(TrainConfig.for_model("nn", epochs=1, steps_per_epoch=1), digits)
    payload = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict()}
    assert storage_locations(payload) == ["cpu"]
    with saved_as_located("cuda:0", keep=host_side_state(run.optimizer)):
        assert storage_locations(payload) == ["cpu", "cuda:0"]
        assert storage_locations(run.model) == ["cuda:0"]
    # torch's own taggers answer again: a plain save writes cpu.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    assert storage_locations(payload) == ["cpu"]
    assert torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)["model"]  # noqa: TID251
